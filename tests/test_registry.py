"""The one registry behind editors, judges and datasets, and the one typed-option parser."""

import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from msafety_bench.errors import UsageError
from msafety_bench.options import parse_options, typed_value


def _installed_plugin(tmp_path, entry_points: str) -> str:
    """A real distribution (dist-info on sys.path) with the given entry points; returns its site folder."""
    site = tmp_path / "site"
    (site / "thirdparty").mkdir(parents=True)
    (site / "thirdparty" / "__init__.py").write_text(textwrap.dedent("""
        from msafety_bench.data import PromptRecord
        from msafety_bench.editing import Editor, NullEdit

        class Shadow(Editor):
            name = "sparse"

        def tiny_set(path):
            return [PromptRecord("t-1", "en", f"prompt from {path}", "harmful", "misc", "eval")]
    """))
    info = site / "thirdparty-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return str(site)


def test_a_plugin_adds_a_dataset_but_cannot_shadow_a_built_in_editor(tmp_path):
    site = _installed_plugin(tmp_path, "[msafety_bench.editors]\nsparse = thirdparty:Shadow\n"
                                       "[msafety_bench.datasets]\nmine = thirdparty:tiny_set\n")
    code = textwrap.dedent(f"""
        import sys, warnings; sys.path.insert(0, {site!r})
        from msafety_bench.data import load_dataset_spec
        from msafety_bench.editing import get_editor
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            editor = get_editor("sparse")
        print(type(editor).__module__, [str(w.message) for w in caught])
        print(load_dataset_spec("mine:x.txt")[0].prompt)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith("msafety_bench.editors.sparse ") and "'sparse' is a built-in editor" in out[0]
    assert out[1] == "prompt from x.txt"


def test_built_ins_are_listed_without_importing_them():
    code = ("import sys; from msafety_bench.editing import editor_names; from msafety_bench.judges import judge_names;"
            "print(editor_names(), judge_names(), 'torch' in sys.modules, 'msafety_bench.editors.sparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'sparse'" in out and "'refusal'" in out and out.strip().endswith("False False")


@dataclass(frozen=True)
class _Config:
    rank: int = 32
    lam: float = 0.01
    layer: int | None = None
    two_sided: bool = False
    name: str = "x"


def _factory(model: str | None = None, threshold: float = 0.5, strict: bool = False):
    return model, threshold, strict


def test_one_parser_types_dataclass_fields_and_factory_arguments():
    assert parse_options(_Config, {"rank": "8", "lam": "1e-3", "layer": "none", "two_sided": "yes", "name": "7"},
                         "editor", "e") == {"rank": 8, "lam": 1e-3, "layer": None, "two_sided": True, "name": "7"}
    assert parse_options(_Config, {"layer": "3"}, "editor", "e") == {"layer": 3}
    assert parse_options(_factory, {"threshold": "0.25", "strict": "off"}, "judge", "j") == {"threshold": 0.25,
                                                                                          "strict": False}
    assert parse_options(_Config, {"rank": 4}, "editor", "e") == {"rank": 4}  # typed values (YAML) pass through
    with pytest.raises(UsageError, match="editor 'e' has no option 'rnak': its options are rank, lam"):
        parse_options(_Config, {"rnak": "8"}, "editor", "e")
    with pytest.raises(UsageError, match=r"option e.rank='x' is not a valid int"):
        parse_options(_Config, {"rank": "x"}, "editor", "e")
    with pytest.raises(UsageError, match="not a valid bool"):
        typed_value("maybe", bool, "j.strict")
    with pytest.raises(UsageError, match="has no option --judge-opt nope"):
        parse_options(_factory, {"nope": "1"}, "judge", "j", flag=lambda key: f"--judge-opt {key}")
