"""Reads every daily CSV of the input and prints the number of days and the mean temperature."""

import csv
import os
from pathlib import Path


def main() -> None:
    inputs = Path(os.environ.get("VH_INPUTS_DIR", "/valohai/inputs"))
    files = sorted((inputs / "daily").rglob("*.csv"))
    daily_means = {}
    for path in files:
        with path.open(newline="") as f:
            temps = [float(row["temperature_c"]) for row in csv.DictReader(f)]
        daily_means[path.stem] = sum(temps) / len(temps)
    mean = sum(daily_means.values()) / len(daily_means)
    warmest = max(daily_means, key=daily_means.__getitem__)
    print(f"days: {len(daily_means)}")
    print(f"mean temperature: {mean:.2f} C")
    print(f"warmest day: {warmest} ({daily_means[warmest]:.1f} C)")


if __name__ == "__main__":
    main()
