"""README.md is the markdown of nbs/index.ipynb (nbdev_readme needs Quarto, which cannot be installed here).

`python tests/test_readme.py --write` (or `make readme`) rewrites README.md; the test fails when they differ. It first
copies the claims totals of outputs/reference/CLAIMS.md (written by `make claims`, which then calls this) into the index
notebook, between the TOTALS markers, so the README shows the scoreboard's own numbers.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n"
TOTALS = re.compile(r"(<!-- claims totals: written by `make claims` from outputs/reference/CLAIMS.md -->\n)(.*?)(<!-- end of claims totals -->)", re.S)
CLAIMS_MD = ROOT / "outputs" / "reference" / "CLAIMS.md"


def claims_totals_table(claims_md: Path = CLAIMS_MD) -> str:
    "The markdown table under '## Totals' in CLAIMS.md."
    m = re.search(r"^## Totals\n\n(\|.*?\n)(?:\n|$)", claims_md.read_text(), re.S | re.M)
    assert m, f"{claims_md} has no '## Totals' table: run `make claims`"
    return m.group(1)


def sync_totals(nb_path: Path = ROOT / "nbs" / "index.ipynb"):
    "Copy CLAIMS.md's totals into the index notebook's markdown cell between the TOTALS markers."
    nb = json.loads(nb_path.read_text())
    for c in nb["cells"]:
        src = "".join(c["source"])
        if c["cell_type"] == "markdown" and TOTALS.search(src):
            src = TOTALS.sub(lambda m: m.group(1) + claims_totals_table() + m.group(3), src)
            c["source"] = src.splitlines(keepends=True)
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


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


def test_readme_shows_the_claims_totals():
    text = (ROOT / "README.md").read_text()
    m = TOTALS.search(text)
    assert m and "(outputs/reference/CLAIMS.md)" in text, "README must link CLAIMS.md and show its totals"
    assert m.group(2) == claims_totals_table(), "README's claims totals are not CLAIMS.md's: run `make claims`"


def test_readme_images_exist():
    text = (ROOT / "README.md").read_text()
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (ROOT / path).is_file(), f"README shows {path}, which is not in the repository"


if __name__ == "__main__":
    if "--write" in sys.argv:
        if CLAIMS_MD.exists(): sync_totals()
        (ROOT / "README.md").write_text(render_readme())
        print("wrote README.md from nbs/index.ipynb")
    else:
        print(render_readme())
