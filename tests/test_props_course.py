"""Property tests for the course tooling: lwkit.course (solution markers, student copies), lwkit.run, lwkit.report.

Generated malformed markers must be MarkerErrors naming the line; generated valid cells strip to a reference
built alongside them; generated bad arguments raise ValueError/TypeError naming the argument.
"""

import ast
import json
import math
import re
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwkit import course, report, run

COVERED = {
    "lwkit.course.solution_blocks", "lwkit.course.strip_solutions", "lwkit.course.blank_solutions",
    "lwkit.course.source_of", "lwkit.course.exercises", "lwkit.course.imports_cell",
    "lwkit.course.student_notebook", "lwkit.course.write_student_copies", "lwkit.course.main",
    "lwkit.run.find_notebooks", "lwkit.run.parse_value", "lwkit.run.notebook_parameters",
    "lwkit.run.check_parameters", "lwkit.run.run_notebook", "lwkit.run.main",
    "lwkit.report.record", "lwkit.report.read_records",
}
EXEMPT = {
    "lwkit.course.BEGIN": "constant (the marker text)",
    "lwkit.course.END": "constant (the marker text)",
    "lwkit.course.PLACEHOLDER": "constant (the code placeholder)",
    "lwkit.course.MARKDOWN_PLACEHOLDER": "constant (the markdown placeholder)",
    "lwkit.course.MarkerError": "exception class; raised and checked by the marker properties",
    "lwkit.course.ExistingCopiesError": "exception class; raised by write_student_copies (tests/test_course.py)",
    "lwkit.course.SolutionBlock": "plain dataclass returned by solution_blocks",
    "lwkit.course.Exercise": "plain dataclass returned by exercises",
    "lwkit.run.ROOT": "constant (the checkout folder)",
    "lwkit.run.NOTEBOOKS": "constant (the notebooks folder)",
    "lwkit.run.results_table": "formats the results dict that main builds itself; not a user entry point",
    "lwkit.report.RECORDS_ENV": "constant (an environment variable name)",
    "lwkit.report.NOTEBOOK_ENV": "constant (an environment variable name)",
    "lwkit.report.Record": "plain dataclass returned by record and read_records",
}

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MARKER = re.compile(r"[ \t]*### (BEGIN|END) SOLUTION")

# --- markers -------------------------------------------------------------------------------------------------

indent = st.sampled_from(["", "    ", "        ", "\t", "  \t"])
# Body lines: code-ish text that cannot spell a marker (no 'e', so no 'begin'/'end'/'solution').
body_line = st.text(alphabet="acfxyz0123 =+()[]:,.'", max_size=30)


# Each part of a marker line, its correct value first, then typos for it.
PARTS = {
    "before": ["", "x = 1  ", "# ", "return 42  ", "print(1) "],
    "hashes": ["###", "#", "##", "####", "#####", ""],
    "sep1": [" ", "", "  ", "\t"],
    "word": [None, "lower", "title"],  # BEGIN/END, as drawn, lowercased or titled
    "sep2": [" ", "", "  ", "_", "-", "\t"],
    "sol": ["SOLUTION", "SOLUTIONS", "solution", "Solution", "SOLUTIoN"],
    "after": ["", " ", "\t", "  ", "  # done", " here", "\r", ":"],
}


@st.composite
def malformed_marker(draw):
    """A valid marker with one to three typos: wrong '#' count, spacing, case, text before or after it."""
    typos = draw(st.lists(st.sampled_from(sorted(PARTS)), min_size=1, max_size=3, unique=True))
    part = {name: draw(st.sampled_from(values[1:])) if name in typos else values[0] for name, values in PARTS.items()}
    word = draw(st.sampled_from(["BEGIN", "END"]))
    word = {None: word, "lower": word.lower(), "title": word.title()}[part["word"]]
    line = (draw(indent) + part["before"] + part["hashes"] + part["sep1"] + word + part["sep2"] + part["sol"]
            + part["after"])
    assert not MARKER.fullmatch(line)
    return line


@st.composite
def valid_cell(draw):
    """(source, expected strip result, number of blocks): lines and blocks drawn together with the reference."""
    src, expected, blocks = [], [], 0
    for _ in range(draw(st.integers(0, 4))):
        plain = draw(st.lists(body_line, max_size=3))
        src += plain
        expected += plain
        if draw(st.booleans()):
            ind = draw(indent)
            src += [ind + course.BEGIN, *draw(st.lists(body_line, max_size=4)), draw(indent) + course.END]
            expected.append(ind + course.PLACEHOLDER)
            blocks += 1
    end = draw(st.sampled_from(["", "\n"]))
    return "\n".join(src) + end, "\n".join(expected) + end, blocks


@FAST
@given(valid_cell())
def test_valid_cells_strip_like_the_reference(cell):
    source, expected, n = cell
    assert course.strip_solutions(source) == expected
    assert len(course.solution_blocks(source)) == n
    assert "SOLUTION" not in course.strip_solutions(source)


@FAST
@given(valid_cell(), malformed_marker(), st.data())
def test_malformed_marker_anywhere_is_an_error_on_its_line(cell, bad, data):
    lines = cell[0].split("\n")
    at = data.draw(st.integers(0, len(lines)))
    source = "\n".join(lines[:at] + [bad] + lines[at:])
    for fn in (course.strip_solutions, course.blank_solutions, course.solution_blocks):
        with pytest.raises(course.MarkerError) as info:
            fn(source, notebook="07_x.ipynb", cell=4)
        assert info.value.line == at + 1, (source, bad)
        assert f"07_x.ipynb, cell index 4, line {at + 1}: {bad!r} looks like a solution marker" in str(info.value)


@FAST
@given(st.lists(st.sampled_from("BE."), max_size=8), indent)
def test_balance_check_matches_the_reference(seq, ind):
    """A marker sequence is accepted exactly when it reads (BEGIN END)*; '.' is a body line."""
    source = "\n".join({"B": ind + course.BEGIN, "E": ind + course.END, ".": ind + "x = 1"}[s] for s in seq)
    well_formed = re.fullmatch(r"(\.*B\.*E)*\.*", "".join(seq)) is not None
    if well_formed:
        assert course.strip_solutions(source).count(course.PLACEHOLDER) == seq.count("B")
    else:
        with pytest.raises(course.MarkerError):
            course.strip_solutions(source)


not_a_str = st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2), st.binary(max_size=4))


@FAST
@given(not_a_str)
def test_sources_must_be_str(bad):
    for fn in (course.strip_solutions, course.blank_solutions, course.solution_blocks):
        with pytest.raises(TypeError, match="source"):
            fn(bad)
    with pytest.raises(TypeError, match="cell"):
        course.source_of(bad)


bad_notebook = st.one_of(
    st.none(), st.integers(), st.lists(st.integers(), max_size=2), st.just({}), st.just({"cells": "x"}),
    st.builds(lambda t: {"cells": [{"cell_type": t, "source": ""}]}, st.sampled_from(["heading", None, 3])),
    st.builds(lambda s: {"cells": [{"cell_type": "code", "source": s}]}, st.one_of(st.integers(), st.just([1]))),
)


@FAST
@given(bad_notebook)
def test_bad_notebooks_are_value_errors(bad):
    for fn in (course.exercises, course.imports_cell, course.student_notebook):
        with pytest.raises(ValueError, match="notebook"):
            fn(bad)


@FAST
@given(st.one_of(st.none(), st.integers(), st.text(max_size=3)))
def test_write_student_copies_bad_arguments(bad):
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(TypeError, match="force"):
            course.write_student_copies(run.NOTEBOOKS, Path(tmp) / "out", force=bad)
        with pytest.raises(ValueError, match="src"):
            course.write_student_copies(Path(tmp) / f"missing{bad}", Path(tmp) / "out")
        assert not (Path(tmp) / "out").exists()
        assert course.main(["student", str(Path(tmp) / "o"), "--src", str(Path(tmp) / "nope")]) == 2
        with pytest.raises(SystemExit):
            course.main(["students", str(bad)])  # argparse: unknown command


# --- run -----------------------------------------------------------------------------------------------------

literal = st.recursive(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                                 st.none(), st.text(alphabet=string.ascii_letters, max_size=5)),
                       lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner), max_leaves=6)


@FAST
@given(literal)
def test_parse_value_reads_python_literals(value):
    assert run.parse_value(repr(value)) == value


@FAST
@given(st.text(max_size=20))
def test_parse_value_never_raises_on_text(text):
    try:
        reference = ast.literal_eval(text.strip())
    except Exception:  # any failure: the text stays a string
        reference = text
    assert run.parse_value(text) == reference


@FAST
@given(not_a_str)
def test_parse_value_bad_argument(bad):
    with pytest.raises(TypeError, match="text"):
        run.parse_value(bad)


identifier = st.from_regex(r"[A-Z][A-Z_]{0,8}", fullmatch=True)


@FAST
@given(st.dictionaries(st.sampled_from(["00_a", "01_b", "02_c"]), st.dictionaries(identifier, st.just("1"), max_size=4),
                       min_size=1), st.dictionaries(identifier, st.integers(), max_size=3))
def test_check_parameters_matches_the_reference(known, parameters):
    everywhere = {name for params in known.values() for name in params}
    unknown = [name for name in parameters if name not in everywhere]
    if unknown:
        with pytest.raises(ValueError, match=re.escape(f"-p {unknown[0]}:")):
            run.check_parameters(parameters, known)
    else:
        assert run.check_parameters(parameters, known) == {
            nb: {k: v for k, v in parameters.items() if k in params} for nb, params in known.items()}


@FAST
@given(st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=12))
def test_find_notebooks_unknown_name(name):
    stems = [p.stem for p in run.NOTEBOOKS.glob("*.ipynb")]
    matches = [s for s in stems if s == name] or [s for s in stems if s.startswith(name)]
    if len(matches) == 1:
        assert run.find_notebooks([name])[0].stem == matches[0]
    else:
        with pytest.raises(ValueError, match=re.escape(f"notebook {name!r} matches")):
            run.find_notebooks([name])
    with pytest.raises(ValueError, match="does not exist"):
        run.find_notebooks([f"missing/{name}.ipynb"])
    with pytest.raises(TypeError, match="names"):
        run.find_notebooks(name)
    with pytest.raises(ValueError, match="parameters cell"):
        run.notebook_parameters(Path("missing") / f"{name}.ipynb")


@FAST
@given(st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.text(max_size=3)))
def test_run_notebook_bad_timeout(bad):
    with pytest.raises(ValueError, match="timeout"):
        run.run_notebook(run.find_notebooks(["00"])[0], Path("unused"), {}, Path("unused.jsonl"), bad)


@FAST
@given(st.one_of(st.integers(max_value=0).map(str), st.floats(allow_nan=False).map(str),
                 st.text(alphabet=string.ascii_letters, min_size=1, max_size=5)))
def test_run_main_bad_timeout(capsys, bad):
    with pytest.raises(SystemExit) as info:
        run.main(["00", "--timeout", bad, "--out", "/nonexistent/never-created"])
    assert info.value.code == 2 and "--timeout" in capsys.readouterr().err


# --- report --------------------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@FAST
@given(finite, st.one_of(st.none(), st.tuples(finite, finite).map(sorted)))
def test_record_ok_matches_the_reference(value, expected):
    rec = report.record("k", value, expected=expected, quiet=True)
    assert rec.ok == (expected is None or expected[0] <= value <= expected[1])
    assert rec.value == value


@FAST
@given(st.sampled_from([math.nan, math.inf, -math.inf]), st.one_of(st.none(), st.tuples(finite, finite).map(sorted)))
def test_record_non_finite_is_never_ok(value, expected):
    assert report.record("k", value, expected=expected, quiet=True).ok is False


@FAST
@given(st.one_of(st.none(), st.integers(), st.binary(max_size=3), st.text(alphabet=" \t\n", max_size=3)))
def test_record_bad_key(bad):
    with pytest.raises((TypeError, ValueError), match="key"):
        report.record(bad, 1.0, quiet=True)


bad_expected = st.one_of(
    st.tuples(finite, finite).filter(lambda t: t[0] > t[1]),
    st.tuples(st.sampled_from([math.nan, math.inf, -math.inf]), finite),
    st.lists(finite, max_size=4).filter(lambda v: len(v) != 2),
    st.tuples(st.text(max_size=2), finite), st.floats(), st.text(max_size=3),
)


@FAST
@given(bad_expected)
def test_record_bad_expected(bad):
    with pytest.raises((TypeError, ValueError), match="expected"):
        report.record("k", 1.0, expected=bad, quiet=True)


@FAST
@given(st.lists(st.tuples(finite, st.booleans()), min_size=1, max_size=4), st.data())
def test_read_records_truncated_is_a_prefix_or_a_clear_error(monkeypatch, rows, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        monkeypatch.setenv(report.RECORDS_ENV, str(path))
        written = [report.record(f"k{i}", v, expected=(0.0, 1.0) if ranged else None, quiet=True)
                   for i, (v, ranged) in enumerate(rows)]
        whole = path.read_bytes()
        cut = data.draw(st.integers(0, len(whole)))
        path.write_bytes(whole[:cut])
        try:
            back = report.read_records(path)
        except ValueError as exc:
            assert str(path) in str(exc) and ("corrupted" in str(exc) or "expected an object" in str(exc))
        else:  # cut at a line boundary (or just before a newline): a prefix of what was written
            assert back == written[:len(back)]
            assert len(back) == whole[:cut].count(b"}")  # every complete line, and only those


def test_records_file_round_trip_is_json_lines():
    """The format a run's results.json is built from: one JSON object per line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.jsonl"
        path.write_text(json.dumps({"notebook": "", "key": "a", "value": 1.0, "expected": None, "ok": True}) + "\n")
        assert report.read_records(path) == [report.Record("", "a", 1.0, None, True)]
