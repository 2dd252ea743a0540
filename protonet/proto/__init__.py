"""Generated protobuf code for `proto/caffe.proto` (never edit by hand).

Regenerate with:
    python -m grpc_tools.protoc -Iproto --python_out=protonet/proto proto/caffe.proto
"""
