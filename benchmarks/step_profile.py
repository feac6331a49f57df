"""Where one training step's time goes: each part of a `fast`-preset step timed on its own.

    python benchmarks/step_profile.py                       # the device auto, width 64, batch 256 and 1024
    python benchmarks/step_profile.py --no-compile --budget-s 60
    python benchmarks/step_profile.py --smoke               # width 8, batch 16, CPU, seconds

Parts, at each batch size (uint8 images already on the device, random views made once):

    augment               BatchAugment of both views (one call)
    fwd_bwd_fp32          forward + loss + backward, float32, contiguous
    fwd_bwd_bf16          the same under bf16 autocast (channels-last on CUDA)
    optimizer             LARS optimizer.step() alone (the gradients already there)
    eager_step            train.training_step: the whole step as pretrain runs it eagerly
    compiled_step         training_step on torch.compile(model)
    graphed_step          train.GraphedStep: the whole step replayed from a CUDA graph
    compiled_graphed_step GraphedStep around torch.compile(model)

Timing: warm-up calls, then `repeats` loops of `steps` calls, the device synchronised around each
loop (CUDA events on a GPU, perf_counter on the CPU); the median loop gives ms per call. Images/s
of a whole-step part include the augmentation (a step needs its views).

Aten calls per part are counted on any device with a TorchDispatchMode at a small batch (the
counts do not depend on the batch size): each is at least one kernel launch or a Python-side
view on a GPU. Compiled parts are not counted (their kernels do not pass through the dispatcher).

On CUDA a check runs a few steps of GraphedStep and of the eager step from identical copies of
the model and optimizer, on the same views and learning rates, and compares the weights.

--budget-s: parts that would start after the budget is spent are skipped and marked so;
torch.compile costs tens of seconds per shape (--no-compile leaves it out).
benchmarks/gpu_run.py calls profile_step(...).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import common  # first: it puts this checkout on sys.path for vicreg_lib
from vicreg_lib.augment import BatchAugment, get_recipe
from vicreg_lib.config import TrainConfig
from vicreg_lib.hardware import precision_for
from vicreg_lib.loss import VICRegLoss
from vicreg_lib.model import build_model
from vicreg_lib.optim import build_optimizer
from vicreg_lib.train import GraphedStep, training_step

PRESET = "fast"
PARTS = ("augment", "fwd_bwd_fp32", "fwd_bwd_bf16", "optimizer", "eager_step", "compiled_step", "graphed_step",
         "compiled_graphed_step")
STEP_PARTS = ("eager_step", "compiled_step", "graphed_step", "compiled_graphed_step")
COMPILED_PARTS = ("compiled_step", "compiled_graphed_step")
GRAPHED_PARTS = ("graphed_step", "compiled_graphed_step")
COMPILE_GUESS_S = 40.0  # a ResNet-18 step's first compile on a GPU, until one is measured here
CHECK_STEPS = 6  # GraphedStep's warm-up steps, the capture, then replays
CHECK_TOLERANCE = 0.05  # weight difference / update size: bf16 noise is ~1e-2, a wrong step ~1


class AtenCounter(TorchDispatchMode):
    """Counts every aten call dispatched while active (the ops a GPU would launch)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def count_aten_calls(fn: Callable[[], Any]) -> int:
    with AtenCounter() as counter:
        fn()
    return counter.calls


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int, repeats: int) -> float:
    """Median over `repeats` loops of `steps` calls of fn: milliseconds per call."""
    for _ in range(warmup):
        fn()
    common.synchronize(device)
    loops = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                fn()
            end.record()
            end.synchronize()
            loops.append(start.elapsed_time(end) / steps)
        else:
            started = time.perf_counter()
            for _ in range(steps):
                fn()
            loops.append((time.perf_counter() - started) * 1000 / steps)
    return statistics.median(loops)


class Bench:
    """Everything one batch size's parts need: images, views, the models, loss and optimizers."""

    def __init__(self, config: TrainConfig, batch: int, device: torch.device) -> None:
        self.config, self.batch, self.device = config, batch, device
        self.use_amp, self.channels_last = precision_for(device, "auto", "auto")
        generator = torch.Generator(device=device).manual_seed(0)
        self.images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device,
                                    generator=generator)
        self.augment = BatchAugment(get_recipe(config.recipe, config.crop_interpolation)).to(device)
        self.view1, self.view2 = self.augment(self.images, generator=generator)
        self.contiguous_views = (self.view1, self.view2)  # the fp32 part's: no channels-last there
        self.loss_fn = VICRegLoss(config.lam, config.mu, config.nu, convention=config.loss_convention)
        torch.manual_seed(0)
        self.model = build_model(**config.arch()).to(device)
        self.fp32_model = copy.deepcopy(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.view1 = self.view1.contiguous(memory_format=torch.channels_last)
            self.view2 = self.view2.contiguous(memory_format=torch.channels_last)
        self.compiled: torch.nn.Module | None = None
        self.graph_step: GraphedStep | None = None  # the last graphed part's, to say whether it captured
        self.lr = config.lr

    def optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        c = self.config
        return build_optimizer(model or self.model, c.optimizer, c.lr, c.weight_decay, eta=c.lars_eta,
                               clip=c.lars_clip)

    def fwd_bwd(self, model: torch.nn.Module, amp: bool, contiguous: bool = False) -> Callable[[], None]:
        view1, view2 = self.contiguous_views if contiguous else (self.view1, self.view2)

        def run() -> None:
            model.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=amp):
                z1, z2 = model(view1, view2)
            self.loss_fn(z1, z2).total.backward()
        return run

    def step(self, model: torch.nn.Module, graphed: bool) -> Callable[[], Any]:
        optimizer = self.optimizer()  # its params are self.model's, which a compiled wrapper shares
        if graphed:
            graph_step = self.graph_step = GraphedStep(model, self.loss_fn, optimizer, self.use_amp)
            return lambda: graph_step(self.view1, self.view2, self.lr)
        return lambda: training_step(model, self.loss_fn, optimizer, self.view1, self.view2, self.lr, self.use_amp)

    def part(self, name: str) -> Callable[[], Any]:
        """The callable that runs part `name` once."""
        if name == "augment":
            return lambda: self.augment(self.images)
        if name == "fwd_bwd_fp32":
            return self.fwd_bwd(self.fp32_model, amp=False, contiguous=True)
        if name == "fwd_bwd_bf16":
            return self.fwd_bwd(self.model, amp=True)
        if name == "optimizer":
            optimizer = self.optimizer()
            self.fwd_bwd(self.model, self.use_amp)()
            return optimizer.step
        if name in COMPILED_PARTS and self.compiled is None:
            self.compiled = torch.compile(self.model)
        model = self.compiled if name in COMPILED_PARTS else self.model
        return self.step(model, graphed=name in GRAPHED_PARTS)


def refusal(name: str, device: torch.device, use_compile: bool) -> str | None:
    """Why part `name` cannot run here (None: it can)."""
    if name in GRAPHED_PARTS and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if name in COMPILED_PARTS and not use_compile:
        return "torch.compile is off in this run"
    return None


def count_parts(config: TrainConfig, device: torch.device, use_compile: bool, batch: int) -> dict[str, Any]:
    """Aten calls of one call of each part at a small batch (None where not counted, and why)."""
    bench = Bench(config, batch, device)
    counts: dict[str, Any] = {}
    for name in PARTS:
        if refusal(name, device, use_compile) or name in COMPILED_PARTS:
            counts[name] = None
            continue
        fn = bench.part(name)
        for _ in range(GraphedStep.WARMUP_STEPS + 1 if name in GRAPHED_PARTS else 1):
            fn()  # a graphed step counts its replay, after the warm-up steps and the capture
        counts[name] = count_aten_calls(fn)
    return counts


def check_graphed_step(config: TrainConfig, batch: int, device: torch.device,
                       steps: int = CHECK_STEPS) -> dict[str, Any]:
    """GraphedStep against training_step: `steps` steps each from identical copies of the model and a
    fresh optimizer, on the same views and learning rates. Passes when the weights differ by at most
    CHECK_TOLERANCE of the size of the update (bf16 noise; a step that does nothing differs by ~1)."""
    bench = Bench(config, batch, device)
    generator = torch.Generator(device=device).manual_seed(1)
    views = [bench.augment(bench.images, generator=generator) for _ in range(steps)]
    if bench.channels_last:
        views = [tuple(v.contiguous(memory_format=torch.channels_last) for v in pair) for pair in views]
    lrs = torch.linspace(0.5 * config.lr, config.lr, steps).tolist()
    start = copy.deepcopy(bench.model)
    eager_model, graphed_model = copy.deepcopy(start), copy.deepcopy(start)
    eager_opt, graphed_opt = bench.optimizer(eager_model), bench.optimizer(graphed_model)
    graphed = GraphedStep(graphed_model, bench.loss_fn, graphed_opt, bench.use_amp)
    eager_losses, graphed_losses = [], []
    for (view1, view2), lr in zip(views, lrs):
        eager_losses.append(training_step(eager_model, bench.loss_fn, eager_opt, view1, view2, lr,
                                          bench.use_amp).total.item())
        graphed_losses.append(graphed(view1, view2, lr).total.item())  # read before the next replay
    error = update = 0.0
    for (name, w0), we, wg in zip(start.named_parameters(), eager_model.parameters(), graphed_model.parameters()):
        error += (wg.float() - we.float()).pow(2).sum().item()
        update += (we.float() - w0.float()).pow(2).sum().item()
    ratio = (error / update) ** 0.5 if update > 0 else float("inf")
    losses_close = all(abs(a - b) <= 1e-2 * max(abs(a), 1.0) for a, b in zip(eager_losses, graphed_losses))
    passed = graphed.graphed and ratio <= CHECK_TOLERANCE and losses_close
    return {"passed": bool(passed), "steps": steps, "batch_size": batch, "graphed": graphed.graphed,
            "why_eager": graphed.why_eager, "weight_difference_over_update": ratio, "tolerance": CHECK_TOLERANCE,
            "losses_eager": eager_losses, "losses_graphed": graphed_losses, "losses_close": losses_close}


def time_parts(bench: Bench, names: tuple[str, ...], rows: dict[str, Any], use_compile: bool, deadline: float,
               timing: dict[str, int], compile_cost: list[float], log: Callable[[str], None]) -> None:
    """Time parts `names` of `bench` into rows (ms per call); a part that would end after `deadline`
    (perf_counter) is skipped and says why."""
    batch, device = bench.batch, bench.device
    for name in names:
        why = refusal(name, device, use_compile)
        guess = (compile_cost[-1] if compile_cost else COMPILE_GUESS_S) if (
            name in COMPILED_PARTS and bench.compiled is None) else 0.0
        if why is None and time.perf_counter() + guess > deadline:
            why = "the time budget is spent" if guess == 0 else f"compiling (~{guess:.0f} s) would pass the budget"
        if why is not None:
            rows[name] = {"skipped": why}
            continue
        started = time.perf_counter()
        try:
            fn = bench.part(name)
            # a graphed part's warm-up covers GraphedStep's eager steps and its capture
            warmup = max(timing["warmup"], GraphedStep.WARMUP_STEPS + 2) if name in GRAPHED_PARTS else timing["warmup"]
            ms = time_ms(fn, device, warmup, timing["steps"], timing["repeats"])
        except Exception as error:  # noqa: BLE001 - one failing part (a compile error, say) is recorded
            rows[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:500]}
            log(f"  batch {batch} {name}: FAILED {rows[name]['error']}")
            continue
        seconds = time.perf_counter() - started
        if name in COMPILED_PARTS and not compile_cost:
            compile_cost.append(seconds)
        rows[name] = {"ms": ms, "seconds": seconds}
        if name in GRAPHED_PARTS:  # a capture that failed ran eagerly: the time is not a graph's
            rows[name].update(graphed=bench.graph_step.graphed, why_eager=bench.graph_step.why_eager)
            bench.graph_step = None
        log(f"  batch {batch} {name}: {ms:.2f} ms ({seconds:.1f} s)"
            + (f" NOT GRAPHED: {rows[name]['why_eager']}" if rows[name].get("graphed") is False else ""))


def add_images_per_s(rows: dict[str, Any], batch: int) -> None:
    """Images/s of the augmentation alone and of each whole step with its augmentation."""
    augment_ms = rows["augment"].get("ms")
    if not augment_ms:
        return
    rows["augment"]["images_per_s"] = batch * 1000 / augment_ms
    for name in STEP_PARTS:
        if "ms" in rows[name]:
            rows[name]["images_per_s"] = batch * 1000 / (rows[name]["ms"] + augment_ms)


def profile_config(width: int, batch: int, projector: str | None) -> TrainConfig:
    """The `fast` preset at this width and batch (its lr scaled with the batch, as pretraining's)."""
    extra = {"projector": projector} if projector else {}
    return TrainConfig.from_preset(PRESET, width=width, batch_size=batch, **extra).resolved()


def profile_step(device: torch.device, width: int = 64, batch_sizes: tuple[int, ...] = (256, 1024),
                 projector: str | None = None, use_compile: bool = True, budget_s: float | None = None,
                 warmup: int = 3, steps: int = 10, repeats: int = 5, count_batch: int = 8,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every part of a step timed at each batch size, aten calls counted, and (CUDA) the graphed
    step checked against the eager one. Returns the JSON-ready results (see the module docstring)."""
    started = time.perf_counter()
    deadline = started + (budget_s if budget_s is not None else float("inf"))
    timing = dict(warmup=warmup, steps=steps, repeats=repeats)
    result: dict[str, Any] = {
        "settings": {"preset": PRESET, "width": width, "batch_sizes": list(batch_sizes), "compile": use_compile,
                     "budget_s": budget_s, **timing, "count_batch": count_batch,
                     "projector": projector or profile_config(width, 256, None).projector},
        "parts": {}, "aten_calls": {}}
    log(f"step profile: width {width}, batches {', '.join(map(str, batch_sizes))}, {common.device_name(device)}")
    result["aten_calls"] = count_parts(profile_config(width, count_batch, projector), device, use_compile,
                                       count_batch)
    log(f"  aten calls per part: {result['aten_calls']}")
    if device.type == "cuda":
        try:
            result["graph_check"] = check_graphed_step(profile_config(width, batch_sizes[0], projector),
                                                       batch_sizes[0], device)
        except Exception as error:  # noqa: BLE001 - recorded as a failed check
            result["graph_check"] = {"passed": False, "error": f"{type(error).__name__}: {error}"[:500]}
        log(f"  graphed step vs eager step: {'PASS' if result['graph_check']['passed'] else 'FAIL'}")
    else:
        result["graph_check"] = {"passed": None, "skipped": "CUDA graphs need a CUDA device"}
    compile_cost: list[float] = []
    benches = {batch: Bench(profile_config(width, batch, projector), batch, device) for batch in batch_sizes}
    # every batch size's uncompiled parts first: a budget spent on compiling leaves them measured
    for names in (tuple(n for n in PARTS if n not in COMPILED_PARTS), COMPILED_PARTS):
        for batch, bench in benches.items():
            rows = result["parts"].setdefault(str(batch), {})
            time_parts(bench, names, rows, use_compile, deadline, timing, compile_cost, log)
    for batch in batch_sizes:
        result["parts"][str(batch)] = {name: result["parts"][str(batch)][name] for name in PARTS}  # table order
        add_images_per_s(result["parts"][str(batch)], batch)
    result["seconds"] = time.perf_counter() - started
    return result


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per part: ms and images/s at each batch size, and the aten calls."""
    rows = []
    for name in PARTS:
        row: dict[str, Any] = {"part": name}
        for batch, parts in result["parts"].items():
            part = parts[name]
            row[f"ms@{batch}"] = part.get("ms", "skipped" if "skipped" in part else "failed")
            row[f"img/s@{batch}"] = part.get("images_per_s", "")
        count = result["aten_calls"].get(name)
        row["aten calls"] = count if count is not None else "-"
        rows.append(row)
    return rows


def print_profile(result: dict[str, Any]) -> None:
    rows = table_rows(result)
    common.print_table(rows, list(rows[0]), title="ms per call of each part of a step (images/s: step + augment)")
    for batch, parts in result["parts"].items():
        for name, part in parts.items():
            if "skipped" in part or "error" in part:
                print(f"  batch {batch} {name}: {part.get('skipped') or part.get('error')}")


def parse_args(argv: list[str] | None):
    parser = common.base_parser(__doc__.splitlines()[0], "step_profile.json")
    add = parser.add_argument
    add("--width", type=common.positive_int, default=None, help="ResNet-18 width (default 64; smoke 8)")
    add("--batch-sizes", default=None, help="comma-separated batch sizes (default 256,1024; smoke 16)")
    add("--projector", default=None, help="projector spec (default: the preset's; smoke 64-64-64)")
    add("--no-compile", action="store_true", help="leave out the torch.compile parts")
    add("--budget-s", type=float, default=None, help="skip the parts that would start after this many seconds")
    add("--steps", type=common.positive_int, default=None, help="calls per timed loop (default 10; smoke 2)")
    add("--repeats", type=common.positive_int, default=None, help="timed loops per part (default 5; smoke 2)")
    return parser.parse_args(argv)


def batch_sizes_option(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 2:
        raise SystemExit(f"step_profile: --batch-sizes {text!r}: give batch sizes >= 2 separated by commas, "
                         f"e.g. 256,1024")
    return sizes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device("cpu") if args.smoke else args.device
    sizes = batch_sizes_option(args.batch_sizes or ("16" if args.smoke else "256,1024"))
    result = profile_step(
        device, width=args.width or (8 if args.smoke else 64), batch_sizes=sizes,
        projector=args.projector or ("64-64-64" if args.smoke else None),
        use_compile=not (args.no_compile or args.smoke), budget_s=args.budget_s,
        warmup=1 if args.smoke else 3, steps=args.steps or (2 if args.smoke else 10),
        repeats=args.repeats or (2 if args.smoke else 5), count_batch=8)
    print_profile(result)
    result["settings"]["smoke"] = args.smoke
    payload = {"benchmark": "step_profile", **common.run_info(device), **result}
    common.write_json(args.json, common.finite(payload))
    return payload


if __name__ == "__main__":
    main()
