"""Command line: ``python -m vicreg_lib pretrain --data synthetic --width 16 --epochs 5``.

Pretrain options come from TrainConfig's fields (``--batch-size`` sets ``batch_size``), ``--preset``
from config.PRESETS. Runtime errors print one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable, Sequence

from .config import PRESETS, TrainConfig, field_names, field_type
from .hardware import DEVICE_CHOICES, resolve_device


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _optional_value(kind: type) -> Callable[[str], object]:

    def parse(text: str):
        if text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} or 'none', got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def add_pretrain_arguments(parser: argparse.ArgumentParser, per_setting: bool = True) -> None:
    """``--preset`` and one option per TrainConfig field; ``per_setting=False`` leaves out lam, mu, nu."""
    presets = "; ".join(f"{name}: " + ", ".join(f"{key}={value}" for key, value in values.items())
                        for name, values in PRESETS.items())
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None, help="start from a named preset, then "
                        f"apply the options given (default: TrainConfig's defaults). {presets}")
    hidden = set() if per_setting else set(field_names("per_setting"))
    for spec in dataclasses.fields(TrainConfig):
        if spec.name in hidden or spec.name == "preset":
            continue
        flag = "--" + spec.name.replace("_", "-")
        kind, nullable = field_type(spec)
        help_text = spec.metadata["help"] + ("" if "default" in spec.metadata["help"] else f" (default: {spec.default})")
        if kind is bool:  # default None: "not given", so a preset's value stays
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_optional_value(kind) if nullable else kind, default=None,
                                choices=spec.metadata["choices"], help=help_text,
                                metavar=spec.name.upper() if spec.metadata["choices"] is None else None)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {name: getattr(args, name) for name in field_names() if getattr(args, name, None) is not None}
    return TrainConfig.from_preset(args.preset, **given) if args.preset else TrainConfig(**given)


def run_pretrain(args: argparse.Namespace) -> int:
    from .hardware import is_main_process
    from .train import TrainingDiverged, pretrain

    try:
        config = config_from_args(args)
        if resolve_device(config.device).type == "cpu" and config.width >= 32:
            print(f"note: training a width-{config.width} ResNet-18 on the CPU will be slow; for a quick run try "
                  "--width 16 --projector 512-512-512 --max-train-images 5000", file=sys.stderr)
    except ValueError as error:
        return _fail(str(error))
    try:
        result = pretrain(config)
    except TrainingDiverged as error:
        print(f"training diverged: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, OSError) as error:  # data spec, checkpoint, out_dir, full disk
        return _fail(str(error))
    if is_main_process():
        last = result.history[-1] if result.history else {}
        summary = ", ".join(f"{key} {last[key]:.4g}" for key in ("loss", "std", "knn_top1") if key in last)
        print(f"finished epoch {last.get('epoch', '?')}: {summary}")
        for label, path in (("checkpoint", result.checkpoint_path), ("metrics", result.out_dir / "metrics.jsonl")):
            print(f"{label + ':':<11} {path if path.exists() else 'none written'}")  # name only files that exist
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from .eval.probes import PROTOCOLS

    parser.add_argument("checkpoint", help="a checkpoint.pt written by pretrain")
    parser.add_argument("--data", default=None, help="data spec to evaluate on (default: the one it was trained on)")
    parser.add_argument("--data-root", default=None, help="where downloads and unpacked archives go (default: "
                                                          "$VICREG_DATA_ROOT, else data; never the checkpoint's)")
    parser.add_argument("--device", default="auto", help=f"device: {DEVICE_CHOICES}")
    parser.add_argument("--batch-size", type=int, default=512, help="batch size of feature extraction")
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS, default=None, dest="protocols",
                        help="linear protocol, repeatable (default: fast); standard and blog train through the "
                             "encoder every epoch: minutes on a GPU, hours on a CPU")
    parser.add_argument("--probe-epochs", type=_optional_value(int), default=None,
                        help="epochs of every linear probe (default: each protocol's own)")
    parser.add_argument("--max-train-images", type=_optional_value(int), default=None,
                        help="use a random subset of the train split (quick looks)")
    parser.add_argument("--random-init-baseline", action=argparse.BooleanOptionalAction, default=False,
                        help="also evaluate the same architecture at random initialisation")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show progress bars")


def run_evaluate(args: argparse.Namespace) -> int:
    from .eval.report import EvalConfig, evaluate_checkpoint, format_table

    try:
        resolve_device(args.device)  # before the checkpoint is read: a typo is the error named
        given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(EvalConfig)}  # options it has
        config = EvalConfig(**{name: value for name, value in given.items() if value is not None})
        results = evaluate_checkpoint(args.checkpoint, config)
    except (ValueError, OSError) as error:  # CheckpointError, DataSpecError, bad numbers, an unwritable folder
        return _fail(str(error))
    print(format_table(results))
    return 0


def add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    from .ablation import PAPER_ABLATION

    paper_grid = ";".join(",".join(f"{c:g}" for c in setting) for setting in PAPER_ABLATION)
    parser.add_argument("--grid", default=paper_grid,
                        help=f"settings lam,mu,nu separated by ';' (default: the paper's six, {paper_grid})")
    parser.add_argument("--cache-dir", default=None,
                        help="one folder per setting and config (default: $VICREG_RUNS/ablation)")
    parser.add_argument("--probe-epochs", type=int, default=50, help="epochs of the linear probe")
    parser.add_argument("--seeds", default=None,
                        help="seeds separated by ',', one run per setting and seed, e.g. 0,1,2 (default: --seed)")
    add_pretrain_arguments(parser, per_setting=False)  # shared by every setting's run


def run_ablate(args: argparse.Namespace) -> int:
    from .ablation import parse_grid, run_ablation

    try:
        grid = parse_grid(args.grid)
        config = config_from_args(args)
        seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as error:
        return _fail(f"--seeds {args.seeds!r}: write integers separated by ',', e.g. 0,1,2"
                     if "int()" in str(error) else str(error))
    try:
        table = run_ablation(grid, config, cache_dir=args.cache_dir, probe_epochs=args.probe_epochs,
                             progress=config.progress, seeds=seeds)
    except (ValueError, FileNotFoundError, OSError) as error:  # bad data spec, probe_epochs, seeds
        return _fail(str(error))
    print(table.with_paper())
    if len(table) > len(table.settings()):
        print(table.summary())
    print(f"{len(table.settings())} settings, {len(table)} runs in {table.elapsed_s:.1f} s "
          f"({sum(r['cached'] for r in table)} from the cache)")
    return 0


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "pretrain": ("pretrain a VICReg model (options mirror TrainConfig)", add_pretrain_arguments, run_pretrain),
    "evaluate": ("kNN, linear-probe and label-efficiency table of a checkpoint", add_evaluate_arguments,
                 run_evaluate),
    "ablate": ("pretrain once per (lam, mu, nu) and compare collapse diagnostics with the paper's table",
               add_ablate_arguments, run_ablate),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vicreg_lib", description="VICReg on CIFAR-10.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt as error:  # RunInterrupted says what was saved and how to continue
        print(f"\n{error or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(error, "signum", 2)


if __name__ == "__main__":
    raise SystemExit(main())
