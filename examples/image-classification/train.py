"""Lists the training images by class, reading the input directory as on the platform."""

import os
from pathlib import Path


def main() -> None:
    inputs = Path(os.environ.get("VH_INPUTS_DIR", "/valohai/inputs"))
    images = inputs / "training-images"
    total = 0
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        count = sum(1 for f in folder.iterdir() if f.is_file())
        total += count
        print(f"class {folder.name}: {count} images")
    print(f"training on {total} images")


if __name__ == "__main__":
    main()
