"""Generated protobuf code for `proto/caffe.proto` (never edit by hand).

Regenerate with `proto/regenerate.sh`: it runs grpcio-tools 1.51.3 (protoc
3.21) in a throwaway venv, whose gencode imports under protobuf 4.21 through
7.x (a newer protoc's gencode refuses runtimes older than itself).
"""
