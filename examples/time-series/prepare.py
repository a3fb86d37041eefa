"""Writes one CSV of hourly readings per day of a year and asks for them as a dataset version.

Platform code: files go to the outputs directory; valohai.metadata.jsonl puts each in
dataset://weather/<year> with packaging.
"""

import argparse
import datetime
import json
import math
import os
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--year", type=int, default=2025)
    args = parser.parse_args()

    outputs = Path(os.environ.get("VH_OUTPUTS_DIR", "/valohai/outputs"))
    version = f"dataset://weather/{args.year}"
    rng = random.Random(args.year)  # seeded: the same readings every run
    day = datetime.date(args.year, 1, 1)
    lines = []
    while day.year == args.year:
        season = -math.cos(2 * math.pi * (day.timetuple().tm_yday - 15) / 365)
        rows = ["hour,temperature_c,humidity_pct"]
        for hour in range(24):
            daily = -math.cos(2 * math.pi * (hour - 4) / 24)
            temp = 8 + 12 * season + 4 * daily + rng.gauss(0, 1.5)
            rows.append(f"{hour},{temp:.1f},{rng.randint(40, 95)}")
        rel = f"{day:%Y/%m}/{day.isoformat()}.csv"
        (outputs / rel).parent.mkdir(parents=True, exist_ok=True)
        (outputs / rel).write_text("\n".join(rows) + "\n")
        entry = {"uri": version, "packaging": True}
        lines.append(json.dumps({"file": rel, "metadata": {"valohai.dataset-versions": [entry]}}))
        day += datetime.timedelta(days=1)
    (outputs / "valohai.metadata.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} daily files for {version}")


if __name__ == "__main__":
    main()
