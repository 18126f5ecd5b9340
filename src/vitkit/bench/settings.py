"""What ``vitkit bench`` runs and how it is timed: torch-free (its options come from here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vitkit.errors import UsageError
from vitkit.inference.settings import PRECISIONS, parse_threads
from vitkit.options import option

PEERS = ("transformers", "timm", "onnx")


@dataclass(frozen=True)
class BenchSettings:
    model: str = option(
        "vit-base-patch16-224",
        "a preset name (random weights, 1000 classes) or a checkpoint path / hub id",
        group="what runs",
        flags=("--model", "-m"),
    )
    batch_sizes: list[int] = option(
        help="comma-separated batch sizes", group="what runs", default_factory=lambda: [1, 8]
    )
    image_size: int | None = option(
        None, "resolution", group="what runs", default_help="the model's"
    )
    precision: str = option("fp32", "numeric precision", group="what runs", choices=PRECISIONS)
    compile: bool = option(False, "torch.compile every PyTorch contender", group="what runs")
    against: list[str] = option(
        help="peers: any of transformers,timm,onnx, or none",
        group="what runs",
        default_factory=lambda: ["transformers", "timm"],
    )
    device: str = option("cpu", "cpu or cuda", group="what runs")
    force: bool = option(False, "run bf16/fp16 even on a CPU without support", group="what runs")
    threads: int | str = option(
        "auto",
        "CPU threads per forward pass: a number, or 'auto' (as the commands choose them)",
        group="what runs",
        parse=parse_threads,
    )
    rounds: int = option(7, "interleaved rounds", group="how it is timed")
    repeats: int = option(3, "timed calls per round", group="how it is timed")
    warmup: int = option(2, "untimed calls first", group="how it is timed")
    probe_seconds: float = option(
        1.0,
        "how long each round's GEMM probe runs square products back to back; % of GEMM uses the "
        "rate sustained over that time, as a forward is",
        group="how it is timed",
    )
    cpu_time: bool = option(
        False,
        "time by the process's CPU time with one working thread: comparisons that hold on a "
        "busy machine",
        group="how it is timed",
    )
    memory: bool = option(True, "peak-memory pass", group="how it is timed", flags=("--no-memory",))
    agreement: str | None = option(
        None,
        "also check that --precision gives the same top-1 as fp32 on the images in FOLDER "
        "(macro-F1 too when its sub-folders are the model's labels); without FOLDER: 256 crops "
        "of the bundled real photos",
        group="outputs",
        metavar="FOLDER",
        const="photos",
    )
    write_md: str | None = option(
        None,
        "write the tables into the 'Model forward' (or 'GPU') section of PATH (BENCHMARKS.md "
        "without PATH)",
        group="outputs",
        metavar="PATH",
        const="BENCHMARKS.md",
    )

    def __post_init__(self) -> None:
        unknown = [peer for peer in self.against if peer not in (*PEERS, "none")]
        if unknown:
            raise UsageError(
                f"--against {','.join(unknown)}: choose from {', '.join(PEERS)} or none"
            )

    @property
    def peers(self) -> list[str]:
        return [peer for peer in self.against if peer != "none"]

    def timed_threads(self) -> BenchSettings:
        """The settings as timed: ``--cpu-time`` runs one working thread, so that the process's
        CPU time is the work (another --threads is refused, not overridden)."""
        if not self.cpu_time:
            return self
        if self.threads not in ("auto", 1):
            raise UsageError(f"--threads {self.threads}: --cpu-time runs one thread")
        return dataclasses.replace(self, threads=1)
