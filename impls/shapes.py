"""Sizes, parameter counts, FLOPs and minimum bytes of a flattened layer, from its shape.

Everything here is arithmetic on integers; the benchmarks and reports plot these numbers,
so each count says what it includes.

FLOPs count a multiply-add as 2 and a bias add as 1. Minimum bytes are what an ideal
implementation must move through main memory: every input read once, every output
written once, nothing else (so a fused kernel can reach it, a stage-by-stage one cannot).
"""

from __future__ import annotations

import dataclasses

STAGES = ("lateral", "vertical", "horizontal")
DIRECTIONS = ("forward", "backward", "train")


def output_size(height: int, width: int, kernel_size: int, padding: int) -> tuple[int, int]:
    """Spatial size of the layer's output: (H + 2p - k + 1, W + 2p - k + 1)."""
    return height + 2 * padding - kernel_size + 1, width + 2 * padding - kernel_size + 1


def flat_param_count(in_channels: int, out_channels: int, kernel_size: int) -> int:
    """N*C + 2*N*k + 3*N: lateral, vertical and horizontal weights and their three biases."""
    n, c, k = out_channels, in_channels, kernel_size
    return n * c + 2 * n * k + 3 * n


def dense_param_count(in_channels: int, out_channels: int, kernel_size: int) -> int:
    """N*C*k*k + N: the dense k x k convolution the flattened layer replaces."""
    n, c, k = out_channels, in_channels, kernel_size
    return n * c * k * k + n


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One layer case: batch, in/out channels, input height/width, kernel size, padding."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_size: int
    padding: int

    @property
    def out_height(self) -> int:
        return output_size(self.height, self.width, self.kernel_size, self.padding)[0]

    @property
    def out_width(self) -> int:
        return output_size(self.height, self.width, self.kernel_size, self.padding)[1]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    # Element counts of the tensors between stages: x -> L -> t1 -> V -> t2 -> H -> y.
    def _elements(self) -> dict[str, int]:
        b, c, n, h, w = self.batch, self.in_channels, self.out_channels, self.height, self.width
        return {
            "x": b * c * h * w,
            "t1": b * n * h * w,
            "t2": b * n * self.out_height * w,
            "y": b * n * self.out_height * self.out_width,
        }

    def params(self, kind: str = "flat") -> int:
        if kind == "flat":
            return flat_param_count(self.in_channels, self.out_channels, self.kernel_size)
        if kind == "dense":
            return dense_param_count(self.in_channels, self.out_channels, self.kernel_size)
        raise ValueError(f"kind: expected 'flat' or 'dense', got {kind!r}")

    def stage_flops(self, stage: str) -> int:
        """Forward FLOPs of one stage: 2 per multiply-add plus 1 per bias add."""
        e = self._elements()
        c, k = self.in_channels, self.kernel_size
        if stage == "lateral":
            return (2 * c + 1) * e["t1"]
        if stage == "vertical":
            return (2 * k + 1) * e["t2"]
        if stage == "horizontal":
            return (2 * k + 1) * e["y"]
        raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")

    def stage_bytes(self, stage: str, itemsize: int = 4) -> int:
        """Minimum bytes of one stage run alone: its input read once, its output written once
        (weights included)."""
        e = self._elements()
        n, c, k = self.out_channels, self.in_channels, self.kernel_size
        io = {
            "lateral": e["x"] + e["t1"] + n * c + n,
            "vertical": e["t1"] + e["t2"] + n * k + n,
            "horizontal": e["t2"] + e["y"] + n * k + n,
        }
        if stage not in io:
            raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
        return io[stage] * itemsize

    def flops(self, direction: str = "forward", kind: str = "flat") -> int:
        """FLOPs of the whole layer. Backward costs two forward passes' worth of
        multiply-adds (input gradient and weight gradient of every stage) plus the bias
        reductions; train is forward + backward."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
        e = self._elements()
        if kind == "flat":
            fwd = sum(self.stage_flops(s) for s in STAGES)
            bias_reductions = e["t1"] + e["t2"] + e["y"]
            macs2 = fwd - bias_reductions  # 2 * multiply-adds of the forward pass
        elif kind == "dense":
            k = self.kernel_size
            macs2 = 2 * self.in_channels * k * k * e["y"]
            bias_reductions = e["y"]
            fwd = macs2 + bias_reductions
        else:
            raise ValueError(f"kind: expected 'flat' or 'dense', got {kind!r}")
        bwd = 2 * macs2 + bias_reductions
        return {"forward": fwd, "backward": bwd, "train": fwd + bwd}[direction]

    def min_bytes(self, direction: str = "forward", kind: str = "flat", itemsize: int = 4) -> int:
        """Fewest bytes the whole layer must move: forward reads x and the weights and
        writes y; backward reads x, grad_y and the weights and writes grad_x and the weight
        gradients; train does both, reading x and the weights once."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
        e = self._elements()
        p = self.params(kind)
        fwd = e["x"] + p + e["y"]
        bwd = e["x"] + e["y"] + p + e["x"] + p
        train = fwd + e["y"] + e["x"] + p  # plus reading grad_y, writing grad_x and the weight gradients
        return {"forward": fwd, "backward": bwd, "train": train}[direction] * itemsize

    def stage_group_bytes(self, stages: list[str] | tuple[str, ...], itemsize: int = 4) -> int:
        """Minimum bytes of consecutive stages run as one kernel: the first stage's input
        and weights, the last stage's output and weights; the tensors between them never
        leave the chip in an ideal fused kernel."""
        for stage in stages:
            if stage not in STAGES:
                raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
        if len(stages) == 1:
            return self.stage_bytes(stages[0], itemsize)
        e = self._elements()
        first, last = self.stage_bytes(stages[0], itemsize), self.stage_bytes(stages[-1], itemsize)
        # the tensor the first stage writes and the last one reads, when they are neighbours
        between = {("vertical", "horizontal"): e["t2"], ("lateral", "vertical"): e["t1"]}.get((stages[0], stages[-1]))
        return first + last if between is None else first + last - 2 * between * itemsize

    def work(self, direction: str, kind: str = "flat", itemsize: int = 4) -> tuple[int | None, int | None]:
        """(FLOPs, minimum bytes) of one case: a direction of the whole layer, or
        "stage:<a>+<b>" for one kernel running stages a..b (unknown stage names: None)."""
        if direction.startswith("stage:"):
            stages = direction.split(":", 1)[1].split("+")
            if not all(s in STAGES for s in stages):
                return None, None
            return sum(self.stage_flops(s) for s in stages), self.stage_group_bytes(stages, itemsize)
        return self.flops(direction, kind), self.min_bytes(direction, kind, itemsize)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)
