"""Static op allowlist for TensorFlow graphs (frozen GraphDef, SavedModel), checked before TF loads them.

A GraphDef is a program: besides compute it can hold ops that read or write files (``ReadFile``,
``WriteFile``, ``Save``/``Restore``, ``PrintV2`` to ``file://``, ``ImmutableConst``), call back into Python
(``PyFunc``, ``EagerPyFunc``) or touch the system. TensorFlow runs every op a fetched node depends on,
control edges included, so parity (and tf2onnx's constant folding) would run them on the researcher's
machine. Every node of the graph and of every function in its library must therefore be an op on this
list (pure tensor compute, in-memory variables and control flow) or a call of a function of the same
library; anything else is refused with the op and node named, before anything is imported into TF.

A SavedModel carries its own checkpoint functions (``saver_def``): its save function may use the
checkpoint-writing ops and its restore function the checkpoint-reading ops, and only they, and only when
nothing else (signatures, init ops, object-graph functions) calls them. replaybench never calls the save
function; TF runs the restore function only for TF1 SavedModels, with the model's own ``variables/``
prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from replaybench.errors import UnsafeInputError


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Pure tensor compute: math, shapes, images, quantisation, random numbers, strings (no I/O).
COMPUTE_OPS = _words(
    """
    Abs Acos Acosh Add AddN AddV2 AdjustContrastv2 AdjustHue AdjustSaturation All Any ApproximateEqual
    ArgMax ArgMin AsString Asin Asinh Assert Atan Atan2 Atanh AvgPool AvgPool3D BatchMatMul BatchMatMulV2
    BatchMatMulV3 BatchNormWithGlobalNormalization BatchToSpace BatchToSpaceND BiasAdd BiasAddV1 Bincount
    Bitcast BitwiseAnd BitwiseOr BitwiseXor BroadcastArgs BroadcastGradientArgs BroadcastTo Bucketize
    CTCGreedyDecoder Cast Ceil CheckNumerics CheckNumericsV2 ClipByValue CombinedNonMaxSuppression
    Complex ComplexAbs Concat ConcatOffset ConcatV2 Conj Const Conv Conv1D Conv2D Conv2DBackpropInput
    Conv3D Conv3DBackpropInputV2 Cos Cosh CropAndResize Cross Cumprod Cumsum DenseBincount
    DepthToSpace DepthwiseConv2dNative Dequantize Diag DiagPart Digamma Dilation2D Div DivNoNan
    DynamicPartition DynamicStitch Einsum Elu Empty EnsureShape Equal Erf Erfc Exp ExpandDims Expm1
    ExtractImagePatches FFT FFT2D FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars
    FakeQuantWithMinMaxVarsPerChannel Fill Floor FloorDiv FloorMod FusedBatchNorm FusedBatchNormV2
    FusedBatchNormV3 FusedPadConv2D FusedResizeAndPadConv2D Gather GatherNd GatherV2 Greater
    GreaterEqual HSVToRGB Identity IdentityN Imag InTopKV2 Inv InvertPermutation Invert IsFinite IsInf
    IsNan L2Loss LRN LeakyRelu LeftShift Less LessEqual Lgamma LinSpace Log Log1p LogSoftmax LogicalAnd
    LogicalNot LogicalOr MatMul MatrixBandPart MatrixDeterminant MatrixDiag MatrixDiagPart
    MatrixDiagPartV2 MatrixDiagPartV3 MatrixDiagV2 MatrixDiagV3 MatrixInverse MatrixSetDiag
    MatrixSetDiagV2 MatrixSetDiagV3 Max MaxPool MaxPool3D MaxPoolV2 MaxPoolWithArgmax Maximum Mean Min
    Minimum MirrorPad Mod Mul MulNoNan Multinomial Ndtri Neg NextAfter NoOp NonMaxSuppression
    NonMaxSuppressionV2 NonMaxSuppressionV3 NonMaxSuppressionV4 NonMaxSuppressionV5 NotEqual OneHot
    OnesLike Pack Pad PadV2 ParallelConcat ParallelDynamicStitch Placeholder PlaceholderV2
    PlaceholderWithDefault PopulationCount Pow PreventGradient Prod QuantizeAndDequantize
    QuantizeAndDequantizeV2 QuantizeAndDequantizeV3 QuantizeAndDequantizeV4 QuantizeV2 QuantizedAdd
    QuantizedAvgPool QuantizedBiasAdd QuantizedConcat QuantizedConv2D QuantizedMatMul QuantizedMaxPool
    QuantizedMul QuantizedRelu QuantizedRelu6 QuantizedReshape QuantizedResizeBilinear RFFT RFFT2D
    RGBToHSV RandomGamma RandomNormal RandomShuffle RandomStandardNormal RandomUniform
    RandomUniformInt Range Rank Real RealDiv Reciprocal ReduceJoin Relu Relu6 Requantize Reshape
    ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor ReverseSequence ReverseV2 RightShift
    Rint Roll Round Rsqrt ScatterNd SegmentMax SegmentMean SegmentMin SegmentProd SegmentSum Select
    SelectV2 Selu Shape ShapeN Sigmoid Sign Sin Sinh Size Slice Snapshot Softmax Softplus Softsign
    SpaceToBatch SpaceToBatchND SpaceToDepth SparseToDense Split SplitV Sqrt Square SquaredDifference
    Squeeze StatelessMultinomial StatelessRandomNormal StatelessRandomNormalV2 StatelessRandomUniform
    StatelessRandomUniformInt StatelessRandomUniformV2 StatelessTruncatedNormal
    StaticRegexFullMatch StaticRegexReplace StopGradient StridedSlice StringJoin StringLength
    StringLower StringToHashBucketFast StringToNumber StringUpper Sub Substr Sum Tan Tanh
    TensorScatterAdd TensorScatterMax TensorScatterMin TensorScatterSub TensorScatterUpdate Tile TopK
    TopKV2 Transpose TruncateDiv TruncateMod TruncatedNormal Unique UniqueV2 UniqueWithCounts Unpack
    UnravelIndex UnsortedSegmentMax UnsortedSegmentMin UnsortedSegmentProd UnsortedSegmentSum Where
    Xdivy Xlog1py Xlogy ZerosLike Zeta
    _FusedBatchNormEx _FusedConv2D _FusedDepthwiseConv2dNative _FusedMatMul
    """
)

# In-memory state and control flow: variables, TF1 loops/conds, tensor arrays/lists, function calls.
STATE_AND_CONTROL_OPS = _words(
    """
    Assign AssignAdd AssignSub AssignVariableOp DestroyResourceOp DisableCopyOnRead IsVariableInitialized
    ReadVariableOp VarHandleOp VarIsInitializedOp Variable VariableV2
    Case ControlTrigger Enter Exit If LoopCond Merge NextIteration PartitionedCall RefEnter RefExit
    RefIdentity RefMerge RefNextIteration RefSwitch StatefulPartitionedCall StatelessCase StatelessIf
    StatelessWhile Switch While
    TensorArrayCloseV3 TensorArrayConcatV3 TensorArrayGatherV3 TensorArrayReadV3 TensorArrayScatterV3
    TensorArraySizeV3 TensorArraySplitV3 TensorArrayV3 TensorArrayWriteV3 TensorListConcatV2
    TensorListElementShape TensorListFromTensor TensorListGather TensorListGetItem TensorListLength
    TensorListPopBack TensorListPushBack TensorListReserve TensorListResize TensorListScatterIntoExistingList
    TensorListSetItem TensorListSplit TensorListStack
    """
)

ALLOWED_OPS = COMPUTE_OPS | STATE_AND_CONTROL_OPS

# Allowed only inside a SavedModel's own checkpoint functions (see the module docstring).
SAVE_OPS = frozenset({"SaveV2", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec"})
RESTORE_OPS = frozenset({"RestoreV2", "ShardedFilename", "ShardedFilespec"})

_NODES_LISTED = 12  # how many refused nodes the error names before "and N more"


@dataclass(frozen=True)
class RefusedOp:
    op: str
    node: str
    where: str  # "graph" or "function NAME"


def _func_refs(node: Any, functions: set[str]) -> Iterator[str]:
    """Library functions a NodeDef calls: its op (a function name) and its function-valued attrs."""
    if node.op in functions:
        yield node.op
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        elif value.HasField("list"):
            yield from (f.name for f in value.list.func)


def _reach(start: Iterable[str], calls: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        f = todo.pop()
        if f in seen or f not in calls:
            continue
        seen.add(f)
        todo.extend(calls[f])
    return seen


def _ancestors(names: Iterable[str], inputs: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [n for n in names if n]
    while todo:
        n = todo.pop()
        if n in seen or n not in inputs:
            continue
        seen.add(n)
        todo.extend(inputs[n])
    return seen


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def refused_ops(
    graph_def: Any,
    saver_def: Any = None,
    extra_roots: Iterable[str] = (),
    is_op: Callable[[str], bool] = lambda name: False,
) -> list[RefusedOp]:
    """Every node of ``graph_def`` (a GraphDef) and of its function library whose op is not allowed.

    ``saver_def`` (a SavedModel's SaverDef) names the checkpoint save tensor and restore op: the nodes
    only they depend on, and the functions only those nodes call, may also use SAVE_OPS / RESTORE_OPS.
    ``extra_roots``: functions something other than the graph calls (a SavedModel's object-graph
    functions); they never get the checkpoint exemption. ``is_op``: whether a name is a registered TF
    op (a library function may not shadow one).
    """
    library = {f.signature.name: f for f in graph_def.library.function}
    names = set(library)
    calls = {name: {r for nd in f.node_def for r in _func_refs(nd, names)} for name, f in library.items()}
    inputs = {n.name: [_node_name(i) for i in n.input] for n in graph_def.node}

    save_nodes: set[str] = set()
    restore_nodes: set[str] = set()
    if saver_def is not None and (saver_def.save_tensor_name or saver_def.restore_op_name):
        save_root = _node_name(saver_def.save_tensor_name)
        restore_root = _node_name(saver_def.restore_op_name)
        # every other sink of the graph (signature outputs, init ops) is a model root
        consumed = {i for ins in inputs.values() for i in ins}
        model_roots = [n for n in inputs if n not in consumed and n not in (save_root, restore_root)]
        model_part = _ancestors(model_roots, inputs)
        save_nodes = _ancestors([save_root], inputs) - model_part
        restore_nodes = _ancestors([restore_root], inputs) - model_part
    nodes_by_name = {n.name: n for n in graph_def.node}

    def called_by(node_names: Iterable[str]) -> set[str]:
        return {r for n in node_names for r in _func_refs(nodes_by_name[n], names)}

    other_nodes = set(inputs) - save_nodes - restore_nodes
    model_funcs = _reach(called_by(other_nodes) | set(extra_roots), calls)
    save_funcs = _reach(called_by(save_nodes), calls) - model_funcs
    restore_funcs = _reach(called_by(restore_nodes), calls) - model_funcs
    # a function both checkpoint halves call gets neither exemption
    save_funcs, restore_funcs = save_funcs - restore_funcs, restore_funcs - save_funcs

    def allowed(op: str, extra: frozenset[str]) -> bool:
        return op in ALLOWED_OPS or op in names or op in extra

    refused: list[RefusedOp] = []
    # a function named like a registered op would not be what the allowlist let through
    refused.extend(RefusedOp(name, name, "function library") for name in sorted(names) if is_op(name))
    for n in graph_def.node:
        extra = SAVE_OPS if n.name in save_nodes else RESTORE_OPS if n.name in restore_nodes else frozenset()
        if not allowed(n.op, extra):
            refused.append(RefusedOp(n.op, n.name, "graph"))
    for name, f in library.items():
        extra = SAVE_OPS if name in save_funcs else RESTORE_OPS if name in restore_funcs else frozenset()
        refused.extend(
            RefusedOp(nd.op, nd.name, f"function {name}") for nd in f.node_def if not allowed(nd.op, extra)
        )
    return refused


def check_graph(graph_def: Any, what: str, saver_def: Any = None, extra_roots: Iterable[str] = ()) -> None:
    """Raise UnsafeInputError naming the ops and nodes of ``graph_def`` that are not allowed."""
    bad = refused_ops(graph_def, saver_def, extra_roots, _registered_op)
    if bad:
        raise unsafe_ops_error(what, bad)


def _registered_op(name: str) -> bool:
    """Whether TensorFlow (imported by the caller, a converter) registers an op called ``name``."""
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(name) is not None


def unsafe_ops_error(what: str, bad: list[RefusedOp]) -> UnsafeInputError:
    ops = sorted({b.op for b in bad})
    shown = [f"{b.node} ({b.op}, {b.where})" for b in bad[:_NODES_LISTED]]
    more = f" and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
    return UnsafeInputError(
        f"{what} holds ops outside replaybench's compute allowlist: {', '.join(ops)}; "
        f"nodes: {', '.join(shown)}{more}. These can read or write files, run Python or touch the "
        "system, so the model is neither loaded nor run",
        hint="convert the model with its vendor's tools in an isolated machine if you trust it",
    )


def check_saved_model(saved_model: Any, what: str) -> None:
    """Check every MetaGraph of a SavedModel proto (graph, function library, checkpoint functions)."""
    for mg in saved_model.meta_graphs:
        extra_roots = set(mg.object_graph_def.concrete_functions)
        check_graph(mg.graph_def, what, mg.saver_def if mg.HasField("saver_def") else None, extra_roots)
