"""Command-line tools (Caffe's tools/): each module exposes
`add_arguments(parser)` and `run(args) -> int` for `protonet <command>`.

- convert_imageset: images + list file -> LMDB of Datum records
- compute_mean: LMDB -> mean.binaryproto
- datasets: scikit-learn's digits -> LMDB + HDF5, ready for training
"""
