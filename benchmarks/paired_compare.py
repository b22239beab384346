"""Compare two arms of ``benchmarks/voc12subset.py --seeds ...`` seed by seed.

    python -m benchmarks.paired_compare A_OUT B_OUT [--method seam_plda] [--json F]

Each ``*_OUT`` is a ``--out`` folder of ``voc12subset.py`` run with ``--seeds`` (it holds
``seed<k>/results.json``); the two arms differ by an override (e.g.
``method.cps.loss_background=real`` vs ``constant``). For every seed both arms finished, the
table gives seed mIoU on train and val (classes present / the 13 supported classes) and the
chosen threshold; then each arm's mean ± sd and the paired difference B − A (mean ± sd, and on
how many seeds B is higher). Choose on the train columns; val is reported, never tuned on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.table import print_table

SCORES = ("train_miou_present", "train_miou_13", "val_miou_present", "val_miou_13")
LABELS = {"train_miou_present": "train", "train_miou_13": "train 13",
          "val_miou_present": "val", "val_miou_13": "val 13"}


def _rows(out: Path, method: str) -> dict[int, dict]:
    rows = {}
    for path in sorted(out.glob("seed*/results.json")):
        seed = int(path.parent.name[4:])
        for row in json.loads(path.read_text())["rows"]:
            if row["method"] == method and all(row.get(k) is not None for k in SCORES):
                rows[seed] = row
    return rows


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:.2f} ± {sd:.2f}"


def compare(a: Path, b: Path, method: str) -> dict:
    ra, rb = _rows(a, method), _rows(b, method)
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        raise SystemExit(f"no seed finished in both {a} and {b} for method {method!r}")
    out = {"a": str(a), "b": str(b), "method": method, "seeds": seeds, "per_seed": [],
           "summary": {}}
    for s in seeds:
        out["per_seed"].append({"seed": s, **{f"a_{k}": ra[s][k] for k in SCORES},
                                **{f"b_{k}": rb[s][k] for k in SCORES},
                                "a_threshold": ra[s]["bg_threshold"],
                                "b_threshold": rb[s]["bg_threshold"],
                                "a_train_minutes": ra[s].get("train_minutes"),
                                "b_train_minutes": rb[s].get("train_minutes")})
    for k in SCORES:
        va = [ra[s][k] for s in seeds]
        vb = [rb[s][k] for s in seeds]
        diff = [y - x for x, y in zip(va, vb)]
        out["summary"][k] = {"a": va, "b": vb, "diff": diff,
                             "b_higher": sum(d > 0 for d in diff)}
    return out


def print_comparison(res: dict) -> None:
    print(f"A = {res['a']}\nB = {res['b']}\nmethod {res['method']}, seeds {res['seeds']}")
    print_table(["seed", "arm", *(LABELS[k] for k in SCORES), "thr"],
                [(row["seed"], arm.upper(), *(row[f"{arm}_{k}"] for k in SCORES),
                  row[f"{arm}_threshold"])
                 for row in res["per_seed"] for arm in ("a", "b")],
                {**{LABELS[k]: ".2f" for k in SCORES}, "thr": ".2f"})
    print()
    print_table(["score", "A mean ± sd", "B mean ± sd", "B − A mean ± sd", "B higher"],
                [(LABELS[k], _spread(s["a"]), _spread(s["b"]), _spread(s["diff"]),
                  f"{s['b_higher']} of {len(s['diff'])}")
                 for k, s in ((k, res["summary"][k]) for k in SCORES)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--method", default="seam_plda")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    res = compare(args.a, args.b, args.method)
    print_comparison(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
