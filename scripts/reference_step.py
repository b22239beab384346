"""Run the pinned SEAM+PLDA step through the published code and write what it computes.

    python scripts/reference_step.py --reference PATH_TO_usr922_plda_CHECKOUT \
        [--out tests/data/reference_step.json] [--compare]

The published code (usr922/plda) is not part of this project; give the path of a checkout. This
script builds the pinned weights of ``tests/_reference_step.py`` with this package, exports them
under the published names (``to_reference_state_dict``), loads them with ``strict=True`` into the
published ``models.resnet38_plda.Net``, and executes the published training loop's body (the
statements of ``plda_train.py`` from ``scale_factor = 0.3`` up to ``optimizer.zero_grad()``,
taken from the file and run unchanged, with its loss functions and SEAM's ``max_norm`` taken from
their files the same way) on the pinned batch in float64 on the CPU: ``.cuda()`` is made the
identity, the default dtype is float64, every dropout has p = 0 (as on our side), there is no
DataParallel. It then runs ``loss.backward()`` and writes the loss terms, the source/target pixel
fractions and the norm of every parameter's gradient as JSON. ``--compare`` also computes our
step and prints the largest relative differences.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import _reference_step as pinned  # noqa: E402
import published_code  # noqa: E402

def _git_head(path: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def published_step(reference: Path) -> dict:
    from plda.methods import to_reference_state_dict

    published_code.patch_cuda()  # the published code calls .cuda()
    torch.set_default_dtype(torch.float64)
    sys.path.insert(0, str(reference))
    from models.resnet38_plda import Net  # the published model

    ours = pinned.pinned_model()
    state = to_reference_state_dict(ours.state_dict())
    model = Net(0.6)
    model.load_state_dict(state, strict=True)
    model = model.double()
    model.train()
    pinned.no_dropout(model)

    namespace = published_code.namespace(reference)

    image, label = pinned.pinned_batch()
    p = pinned.PROGRESS
    namespace.update(model=model, pack=(None, image, label),
                     alpha=2.0 / (1.0 + math.exp(-10 * p)) - 1)
    exec(published_code.loop_body(reference / "plda_train.py"), namespace)  # noqa: S102
    ns = types.SimpleNamespace(**namespace)
    ns.loss.backward()

    def fraction(labels: dict, value: int) -> float:
        hit = torch.stack([labels[c] == value for c in range(pinned.NUM_CLASSES)]).any(0)
        return hit.double().mean().item()

    terms = {
        "cls": ((ns.loss_cls1 + ns.loss_cls2) / 2).item(),
        "rvmin": ((ns.loss_rvmin1 + ns.loss_rvmin2) / 2).item(),
        "er": ns.loss_er.item(), "ecr": ns.loss_ecr.item(),
        "domain": ns.loss_adv.item(), "cps_source": ns.loss_ce.item(),
        "cps_target": ns.loss_t_ce.item(), "loss": ns.loss.item(),
    }
    stats = {"source_fraction": (fraction(ns.domain_label1, 0) + fraction(ns.domain_label2, 0)) / 2,
             "target_fraction": (fraction(ns.domain_label1, 1) + fraction(ns.domain_label2, 1)) / 2}
    grads = {n: p.grad.norm().item() for n, p in sorted(model.named_parameters())
             if p.grad is not None}
    return {"terms": terms, "stats": stats, "grad_norms": grads}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, required=True,
                   help="a checkout of the published PLDA code (usr922/plda)")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "reference_step.json")
    p.add_argument("--reference-commit", help="the checkout's commit, when it is not a git "
                   "work tree (an exported archive)")
    p.add_argument("--compare", action="store_true", help="also compute our step and compare")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = published_step(args.reference.resolve())
    result["produced_by"] = {
        "how": "scripts/reference_step.py: the pinned weights and batch of tests/_reference_step.py "
               "run through the published code's Net and training-loop body (float64, CPU, "
               ".cuda() as identity, dropout p=0), then loss.backward()",
        "published_code": {"repository": "usr922/plda", "commit": args.reference_commit or _git_head(args.reference)},
        "this_package_commit": _git_head(ROOT),
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__, "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {len(result['grad_norms'])} gradient norms")
    print(json.dumps({"terms": result["terms"], "stats": result["stats"]}, indent=1))
    if args.compare:
        torch.set_default_dtype(torch.float32)
        ours = pinned.our_step()
        for section in ("terms", "stats", "grad_norms"):
            rel = {k: abs(ours[section][k] - v) / max(abs(v), 1e-300)
                   for k, v in result[section].items()}
            worst = max(rel, key=rel.get)
            print(f"{section}: {len(rel)} values, largest relative difference "
                  f"{rel[worst]:.2e} ({worst})")
        missing = sorted(set(result["grad_norms"]) ^ set(ours["grad_norms"]))
        if missing:
            print(f"gradients on one side only: {missing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
