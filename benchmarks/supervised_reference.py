"""The supervised references for a pretrained VICReg model, in one command: the same ResNet-18 trained with
labels for the same time on the same device (equal compute), and the label-efficiency curve (1%, 10%, 100% of
the labels: supervised from scratch against the VICReg representation with the `fast` probe).

    PYTHONPATH=. python benchmarks/supervised_reference.py --data archive:cifar10_jpeg.tar.gz \\
        --vicreg RUN_FOLDER --equal-s 286 --out supervised_ref

--equal-s is the VICReg run's training time (epochs x its measured epoch time) on this device. Each
few-label supervised run gets --few-label-s seconds (a 500-image set overfits long before that), and a short
full-label run (--short-s) gives a second point for the accuracy-against-compute picture. results.json is
rewritten after every step, so a run cut short keeps what it finished. --smoke: tiny data and budgets on any
device, every step run.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vicreg_lib.checkpoint import load_pretrained  # noqa: E402
from vicreg_lib.data import load_dataset  # noqa: E402
from vicreg_lib.eval.features import extract_features, knn_accuracy  # noqa: E402
from vicreg_lib.eval.probes import class_balanced_subset, label_efficiency, linear_probe  # noqa: E402
from vicreg_lib.eval.supervised import train_supervised  # noqa: E402
from vicreg_lib.hardware import resolve_device  # noqa: E402


def test_top1(result, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    """Test top-1 (%) of a supervised network: its encoder's features through its own linear head."""
    features = extract_features(result.encoder, images, device=device)  # (m, D)
    with torch.no_grad():
        logits = result.classifier.float().cpu()(features)  # (m, C)
    if not torch.isfinite(logits).all():
        raise FloatingPointError("the supervised network's outputs are not finite; no accuracy reported")
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def supervised_run(data: dict, fraction: float, budget_s: float, seed: int, device: torch.device) -> dict:
    labels = data["train_labels"]
    labelled = (torch.arange(len(labels)) if fraction == 1.0
                else class_balanced_subset(labels, fraction, torch.Generator().manual_seed(seed)))
    result = train_supervised(data["train_images"][labelled], labels[labelled], width=64, time_budget_s=budget_s,
                              num_classes=len(data["classes"]), device=device, seed=seed)
    steps_per_epoch = -(-len(labelled) // 256)
    return {"fraction": fraction, "labelled": len(labelled), "budget_s": budget_s, "seed": seed,
            "steps": result.steps, "epochs": round(result.steps / steps_per_epoch, 2),
            "seconds": round(result.seconds, 2), "last_train_top1": result.history[-1]["train_top1"],
            "test_top1": test_top1(result, data["test_images"], data["test_labels"], device),
            "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                        for row in result.history]}


def vicreg_side(path: str, data: dict, fractions: list[float], seeds: list[int], device: torch.device) -> dict:
    """kNN, the fast probe on all labels, and on each fraction for each subset seed, of the VICReg h."""
    model, config = load_pretrained(path, map_location="cpu")
    h_train = extract_features(model, data["train_images"], device=device)  # (n, 512)
    h_test = extract_features(model, data["test_images"], device=device)  # (m, 512)
    pair = (h_train, data["train_labels"], h_test, data["test_labels"])
    out = {"run_settings": config, **knn_accuracy(*pair, k=200),
           "fast_probe_top1": linear_probe(*pair, device=device)["top1"], "label_efficiency": {}}
    for seed in seeds:
        curve = label_efficiency(*pair, fractions=fractions, seed=seed, device=device)
        out["label_efficiency"][str(seed)] = {str(f): top1 for f, top1 in curve.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="synthetic:600,200", help="data spec, e.g. archive:cifar10_jpeg.tar.gz")
    parser.add_argument("--data-root", default="data", help="where an archive is unpacked and decoded")
    parser.add_argument("--vicreg", default=None, help="the VICReg checkpoint or weight-parts folder to compare")
    parser.add_argument("--equal-s", type=float, default=286.0, help="seconds of supervised training, 100%% labels")
    parser.add_argument("--short-s", type=float, default=30.0, help="a shorter full-label run (0 skips it)")
    parser.add_argument("--few-label-s", type=float, default=45.0, help="seconds of each few-label run")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--probe-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed", type=int, default=0, help="weight init, shuffling and the labelled subsets")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/supervised_reference")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: check that every step runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.equal_s, args.short_s, args.few_label_s = 3.0, 1.0, 1.0
    if args.equal_s <= 0 or args.few_label_s <= 0 or args.short_s < 0:
        parser.error("--equal-s and --few-label-s must be > 0 seconds, --short-s >= 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    started = time.perf_counter()
    results: dict = {"command": " ".join(["python", *sys.argv]), "device": str(device),
                     "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                     "torch": torch.__version__, "python": platform.python_version(),
                     "date": time.strftime("%Y-%m-%d"), "supervised": [], "errors": []}

    def save() -> None:
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out / "results.json")

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", flush=True)

    train_images, train_labels, classes = load_dataset(args.data, "train", args.data_root)
    test_images, test_labels, _ = load_dataset(args.data, "test", args.data_root)
    data = dict(train_images=train_images, train_labels=train_labels, test_images=test_images,
                test_labels=test_labels, classes=classes)
    results["data"] = {"spec": args.data, "train": len(train_labels), "test": len(test_labels)}
    say(f"data: {len(train_labels)} train, {len(test_labels)} test images on {device} ({results['gpu']})")
    save()
    if args.vicreg:
        try:
            results["vicreg"] = vicreg_side(args.vicreg, data, [*args.fractions, 1.0], args.probe_seeds, device)
            say(f"vicreg: {json.dumps(results['vicreg'])}")
        except Exception as error:  # a failed step is recorded; the supervised runs still go
            results["errors"].append(f"vicreg: {type(error).__name__}: {error}")
            say(results["errors"][-1])
        save()
    plan = [(1.0, args.equal_s), *[(f, args.few_label_s) for f in args.fractions]]
    plan += [(1.0, args.short_s)] if args.short_s else []
    for fraction, budget in plan:
        try:
            row = supervised_run(data, fraction, budget, seed=args.seed, device=device)
            results["supervised"].append(row)
            say(f"supervised {fraction:.0%} labels, {budget:.0f} s: {row['steps']} steps ({row['epochs']} epochs), "
                f"test top-1 {row['test_top1']:.2f}%")
        except Exception as error:
            results["errors"].append(f"supervised {fraction}: {type(error).__name__}: {error}")
            say(results["errors"][-1])
        save()
    say(f"done: {out / 'results.json'}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
