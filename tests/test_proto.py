"""The generated protonet/proto/caffe_pb2.py matches proto/caffe.proto, and the
schema keeps BVLC Caffe's field numbers."""

import os

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from protonet.proto import caffe_pb2
from protonet.upgrade import TEXT_ONLY, TEXT_ONLY_ENUM_VALUES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generated_module_in_sync_with_proto(tmp_path):
    grpc_tools = pytest.importorskip("grpc_tools")
    from grpc_tools import protoc
    out = tmp_path / "caffe.desc"
    rc = protoc.main(["protoc", f"-I{ROOT}/proto",
                      f"--descriptor_set_out={out}", "caffe.proto"])
    assert rc == 0, "protoc failed on proto/caffe.proto"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(fds.file) == 1
    compiled = fds.file[0]
    # The exact descriptor bytes embedded in the generated module (CopyToProto
    # would re-render float defaults, e.g. 1e-08 as 9.99999994e-09).
    generated = descriptor_pb2.FileDescriptorProto.FromString(
        caffe_pb2.DESCRIPTOR.serialized_pb)
    _normalize(compiled)
    _normalize(generated)
    assert compiled.SerializeToString(deterministic=True) == \
        generated.SerializeToString(deterministic=True), (
        "protonet/proto/caffe_pb2.py is stale: regenerate it with grpc_tools "
        "(see the header of proto/caffe.proto)")


def _normalize(file_proto):
    """Drop what differs between protoc's two renderings of one schema:
    json_name (only in --descriptor_set_out) and the spelling of float
    defaults (1e-08 vs 9.99999994e-09, the same float32)."""
    F = descriptor_pb2.FieldDescriptorProto

    def fix(msg):
        for f in msg.field:
            f.ClearField("json_name")
            if f.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE) and \
                    f.HasField("default_value"):
                value = float(f.default_value)
                if f.type == F.TYPE_FLOAT:
                    value = float(np.float32(value))
                f.default_value = repr(value)
        for nested in msg.nested_type:
            fix(nested)
    for msg in file_proto.message_type:
        fix(msg)
    return file_proto


# (message, field, number) as in BVLC caffe.proto (master, 9b89154).
BVLC_NUMBERS = [
    ("BlobShape", "dim", 1), ("BlobProto", "shape", 7), ("BlobProto", "data", 5),
    ("BlobProto", "diff", 6), ("BlobProto", "double_data", 8),
    ("BlobProto", "num", 1), ("BlobProto", "width", 4),
    ("NetParameter", "name", 1), ("NetParameter", "input", 3),
    ("NetParameter", "input_shape", 8), ("NetParameter", "input_dim", 4),
    ("NetParameter", "layer", 100), ("NetParameter", "layers", 2),
    ("LayerParameter", "name", 1), ("LayerParameter", "type", 2),
    ("LayerParameter", "bottom", 3), ("LayerParameter", "top", 4),
    ("LayerParameter", "blobs", 7), ("LayerParameter", "param", 6),
    ("LayerParameter", "transform_param", 100),
    ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "pooling_param", 121),
    ("LayerParameter", "inner_product_param", 117),
    ("LayerParameter", "batch_norm_param", 139),
    ("LayerParameter", "scale_param", 142), ("LayerParameter", "input_param", 143),
    ("LayerParameter", "crop_param", 144), ("LayerParameter", "tile_param", 138),
    ("LayerParameter", "embed_param", 137), ("LayerParameter", "swish_param", 147),
    ("LayerParameter", "clip_param", 148),
    ("ParamSpec", "lr_mult", 3), ("ParamSpec", "decay_mult", 4),
    ("ConvolutionParameter", "dilation", 18), ("ConvolutionParameter", "group", 5),
    ("PoolingParameter", "round_mode", 13), ("PoolingParameter", "global_pooling", 12),
    ("LossParameter", "normalization", 3), ("LossParameter", "normalize", 2),
    ("SolverParameter", "base_lr", 5), ("SolverParameter", "lr_policy", 8),
    ("SolverParameter", "momentum", 11), ("SolverParameter", "weight_decay", 12),
    ("SolverParameter", "solver_type", 30), ("SolverParameter", "type", 40),
    ("SolverParameter", "iter_size", 36), ("SolverParameter", "clip_gradients", 35),
    ("SolverParameter", "layer_wise_reduce", 41), ("SolverParameter", "weights", 42),
    ("SolverState", "iter", 1), ("SolverState", "learned_net", 2),
    ("SolverState", "history", 3), ("SolverState", "current_step", 4),
    ("V1LayerParameter", "blobs_lr", 7), ("V1LayerParameter", "weight_decay", 8),
    ("V1LayerParameter", "type", 5), ("V1LayerParameter", "blobs", 6),
    ("V1LayerParameter", "layer", 1), ("V1LayerParameter", "param", 1001),
    ("V0LayerParameter", "blobs", 50), ("V0LayerParameter", "kernelsize", 8),
    ("Datum", "data", 4), ("Datum", "float_data", 6),
]


@pytest.mark.parametrize("message,field,number", BVLC_NUMBERS)
def test_bvlc_field_numbers(message, field, number):
    desc = getattr(caffe_pb2, message).DESCRIPTOR
    assert desc.fields_by_name[field].number == number


def test_blob_data_is_packed():
    b = caffe_pb2.BlobProto()
    b.data.extend([1.0, 2.0])
    # tag (5 << 3 | 2) = 0x2a, then length 8: one packed record.
    assert b.SerializeToString() == b"\x2a\x08" + bytes(
        [0, 0, 0x80, 0x3f, 0, 0, 0, 0x40])


# Fork fields with the fork's own number >= 10000 (R-FCN), written to binary.
FORK_HIGH_NUMBERS = {("caffe.LayerParameter", "box_annotator_ohem_param"),
                     ("caffe.LayerParameter", "psroi_pooling_param"),
                     ("caffe.LayerParameter", "roi_pooling_param"),
                     ("caffe.LayerParameter", "smooth_l1_loss_param")}


def _all_messages(desc):
    yield desc
    for nested in desc.nested_types:
        yield from _all_messages(nested)


def test_text_only_registry_matches_proto():
    """Every field at a number in our range is either registered as text-only
    (so io strips it from binary files) or a known fork number."""
    # [protonet] extensions (20000 and up), documented in docs/fork-fields.md.
    ours = {("caffe.SolverParameter", "plateau_param", 20000)}
    high = set()
    for desc in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        for m in _all_messages(desc):
            for f in m.fields:
                if f.number >= 10000:
                    high.add((m.full_name, f.name))
                if (m.full_name, f.name, f.number) in ours:
                    high.discard((m.full_name, f.name))
    assert high == TEXT_ONLY | FORK_HIGH_NUMBERS
    for enum_name, value in TEXT_ONLY_ENUM_VALUES:
        msg, enum = enum_name[len("caffe."):].rsplit(".", 1)
        enum_desc = getattr(caffe_pb2, msg).DESCRIPTOR.enum_types_by_name[enum]
        assert enum_desc.values_by_name[value].number >= 10000
