"""Writes 3 class folders of small images and asks for them as one packaged dataset version.

Plain platform code: files go to the outputs directory, and one line per file in
valohai.metadata.jsonl assigns it to dataset://imagenet-subset/train-v1 with packaging.
"""

import argparse
import json
import os
import random
from pathlib import Path

CLASSES = ("cat", "dog", "bird")
VERSION = "dataset://imagenet-subset/train-v1"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per_class", type=int, default=1000)
    args = parser.parse_args()

    outputs = Path(os.environ.get("VH_OUTPUTS_DIR", "/valohai/outputs"))
    rng = random.Random(42)  # seeded: the same images every run
    lines = []
    for cls in CLASSES:
        (outputs / cls).mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            rel = f"{cls}/{cls}_{i:04d}.jpg"
            (outputs / rel).write_bytes(rng.randbytes(rng.randint(2_000, 6_000)))
            entry = {"uri": VERSION, "packaging": True}
            lines.append(json.dumps({"file": rel, "metadata": {"valohai.dataset-versions": [entry]}}))
    (outputs / "valohai.metadata.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} images in {len(CLASSES)} classes for {VERSION}")


if __name__ == "__main__":
    main()
