"""README.md is the markdown of nbs/index.ipynb (nbdev_readme needs Quarto, which cannot be installed here).

`python tests/test_readme.py --write` (or `make readme`) rewrites README.md; the test fails when they differ.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n"


def render_readme(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    """The markdown cells of the index notebook, joined, with notebook-relative links made repository-relative."""
    cells = json.loads(nb_path.read_text())["cells"]
    text = "\n\n".join("".join(c["source"]).strip() for c in cells if c["cell_type"] == "markdown")
    return HEADER + re.sub(r"\]\(\.\./", "](", text) + "\n"


def test_readme_is_the_index_notebook():
    assert (ROOT / "README.md").read_text() == render_readme(), "README.md is stale: run `make readme`"


def test_readme_leads_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_code = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_code and text.index("## Two commands") < text.index("## What it is") < text.index("## Notebook map")
    assert "make test" in first_code.group(1) and "make repro" in first_code.group(1)


def test_readme_images_exist():
    text = (ROOT / "README.md").read_text()
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (ROOT / path).is_file(), f"README shows {path}, which is not in the repository"


if __name__ == "__main__":
    if "--write" in sys.argv:
        (ROOT / "README.md").write_text(render_readme())
        print("wrote README.md from nbs/index.ipynb")
    else:
        print(render_readme())
