"""Execute the three walk-throughs in place, storing their outputs and plots (`make notebooks`).

    PYTHONHASHSEED=0 python notebooks/execute.py [NOTEBOOK ...]

quantize_8bit.ipynb quantizes for real (a calibration sweep on 64 images): about a minute on 2 cores.
"""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(HERE.glob("quantize_*.ipynb"))
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(HERE.parent)}}).execute()
        for cell in nb.cells:  # keep the stored files stable: no run-specific metadata
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(nb, path)
        print(f"executed {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
