"""The README's Python code blocks run as written, in order, in one namespace (as a reader
pasting them into one session would); bash blocks are what CI itself runs."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    assert BLOCKS, "README has no python blocks"
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace = {"__name__": "__readme__"}
    for i, code in enumerate(BLOCKS):
        try:
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"README python block {i} failed: {err!r}\n{code}") from err
