"""bf16 CPU inference's linear layers with their weights prepacked for oneDNN (`PackedLinear`, `pack_linears`).

torch's bf16 `F.linear` on a CPU reorders the weight into oneDNN's blocked layout in every call; reordered once,
the same products run 1.1-1.35x faster at this project's sizes with identical results (benchmarks/RESULTS.md,
`python -m benchmarks.packed_linear`). `pipelines.model.inference.to_bf16` packs a bf16 encoder for inference.
"""
from __future__ import annotations

import torch


def packing_supported() -> bool:
    """Whether this torch and CPU run oneDNN's bf16 linear on a prepacked weight (`PackedLinear`)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(torch.nn.Module):
    """An `nn.Linear` for bf16 CPU inference whose weight is reordered once into oneDNN's blocked layout
    (`torch.ops.mkldnn._reorder_linear_weight`, multiplied by `torch.ops.mkldnn._linear_pointwise`, the pair
    torch's own compiler uses for frozen CPU models): the plain bf16 `F.linear` reorders the weight on every
    call. Same results (tested equal), faster at this project's sizes (benchmarks/RESULTS.md).
    Inference only: it has no gradient, and no `weight` to cast or move (`dense_weight()` gives it back)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows_hint: int = 256, relu: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.rows_hint = weight.size(1), weight.size(0), rows_hint
        self.relu = relu  # the ReLU that followed it, applied inside oneDNN's product
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous(),
                                                              rows_hint)  # an opaque tensor, not a buffer
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16), persistent=False)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, relu: bool = False) -> "PackedLinear":
        return cls(linear.weight, linear.bias, relu=relu)

    def dense_weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN reads the input as dense rows: a strided view must be made contiguous first (tested)
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16).contiguous(), self.packed, self.bias,
                                                  "relu" if self.relu else "none", [], "")

    def __deepcopy__(self, memo):  # an opaque tensor has no storage to copy: pack a copy of the weight again
        return PackedLinear(self.dense_weight(), None if self.bias is None else self.bias.clone(), self.rows_hint,
                            self.relu)

    def _apply(self, fn, recurse=True):
        raise RuntimeError("a packed linear layer is for bf16 CPU inference only: load the model again to move "
                           "or cast it")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + (", relu=True" if self.relu else ""))


def pack_linears(module: torch.nn.Module) -> int:
    """Replace every `nn.Linear` inside `module` by a `PackedLinear` (in place), one followed by an `nn.ReLU` in
    an `nn.Sequential` (the feed-forward block) with the ReLU fused in (the ReLU becomes an `nn.Identity`);
    returns how many."""
    count = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if type(child) is torch.nn.Linear:
                relu = (isinstance(parent, torch.nn.Sequential) and i + 1 < len(children)
                        and type(children[i + 1][1]) is torch.nn.ReLU)
                setattr(parent, name, PackedLinear.from_linear(child, relu=relu))
                if relu:
                    setattr(parent, children[i + 1][0], torch.nn.Identity())
                count += 1
    return count
