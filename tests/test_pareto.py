import json
from dataclasses import asdict

import matplotlib
import pytest

from lwkit import pareto, report, run

matplotlib.use("Agg")


def brute_front(acc, cost):
    """Reference: keep i unless some j is no worse in both and better in one."""
    keep = []
    for i in range(len(acc)):
        if not any((acc[j] >= acc[i] and cost[j] <= cost[i]) and (acc[j], cost[j]) != (acc[i], cost[i])
                   for j in range(len(acc))):
            keep.append(i)
    return sorted(keep, key=lambda i: (cost[i], -acc[i]))


def test_pareto_front_by_hand():
    acc = [0.90, 0.80, 0.95, 0.85, 0.95]
    cost = [10, 5, 20, 12, 25]
    assert pareto.pareto_front(acc, cost) == [1, 0, 2]  # 3 is beaten by 0, 4 by 2


def test_pareto_front_matches_brute_force_and_keeps_duplicates():
    acc = [0.5, 0.5, 0.7, 0.2, 0.7]
    cost = [3, 3, 5, 1, 6]
    assert pareto.pareto_front(acc, cost) == brute_front(acc, cost) == [3, 0, 1, 2]
    with pytest.raises(ValueError, match="same length"):
        pareto.pareto_front([0.1], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        pareto.pareto_front([float("nan")], [1])


def variant(name, technique="pruning", acc=0.8, size=1000, ms=1.0, notebook="02_pruning_in_practice"):
    return report.Variant(notebook, name, technique, acc, size, 100, ms, 256, 2, "recipe of " + name)


def test_record_variant_writes_under_a_run_and_reads_back(tmp_path, monkeypatch):
    path = tmp_path / "v.jsonl"
    monkeypatch.setenv(report.VARIANTS_ENV, str(path))
    monkeypatch.setenv(report.NOTEBOOK_ENV, "04_quantization_in_practice")
    v = report.record_variant("MLP int8", "quantization", 0.86, 270_000, 266_200, 0.4, 256, 2, recipe="int8",
                              quiet=True)
    assert report.read_variants(path) == [v] and v.notebook == "04_quantization_in_practice"
    with pytest.raises(ValueError, match="technique must be one of"):
        report.record_variant("x", "magic", 0.8, 1, 1, 1.0, 1, 1)
    with pytest.raises(ValueError, match="accuracy must be in"):
        report.record_variant("x", "pruning", 87.0, 1, 1, 1.0, 1, 1)  # a percentage, not a fraction
    assert len(report.read_variants(path)) == 1  # nothing written for the bad calls


def test_record_variant_outside_a_run_only_prints(monkeypatch, capsys):
    monkeypatch.delenv(report.VARIANTS_ENV, raising=False)
    report.record_variant("CNN", "baseline", 0.9, 10, 10, 1.0, 1, 1)
    assert "CNN" in capsys.readouterr().out


def test_read_variants_damaged(tmp_path):
    p = tmp_path / "v.json"
    p.write_text('[{"name": 1}]')
    with pytest.raises(ValueError, match="entry 1"):
        report.read_variants(p)
    p.write_text("[{")
    with pytest.raises(ValueError, match="corrupted"):
        report.read_variants(p)
    assert report.read_variants(tmp_path / "absent.json") == []


def test_course_variants_merges_this_run_with_the_last(tmp_path, monkeypatch):
    old = [variant("old 02", notebook="02_pruning_in_practice"), variant("old 04", notebook="04_quantization_in_practice")]
    (tmp_path / "variants.json").write_text(json.dumps([asdict(v) for v in old]))
    live = tmp_path / ".variants-1.jsonl"
    live.write_text(json.dumps(asdict(variant("new 02", notebook="02_pruning_in_practice"))) + "\n")
    monkeypatch.setenv(report.VARIANTS_ENV, str(live))
    monkeypatch.setenv(report.NOTEBOOK_ENV, "10_capstone_pipeline")
    names = [v.name for v in pareto.course_variants()]
    assert names == ["old 04", "new 02"]


def test_export_html_is_self_contained(tmp_path):
    vs = [variant("a", acc=0.9, size=5000), variant("b", "quantization", acc=0.85, size=1000, ms=0.5),
          variant("c <script>", "distillation", acc=0.8, size=3000, ms=2.0)]
    page = pareto.export_html(vs, tmp_path / "p.html")
    html = page.read_text()
    assert html.count("<svg") == 2 and "<script" not in html and "c &lt;script&gt;" in html
    with pytest.raises(FileExistsError):
        pareto.export_html(vs, tmp_path / "p.html")
    pareto.export_html([], tmp_path / "empty.html")


def test_plot_and_explorer_headless():
    vs = [variant("a"), variant("b", "quantization", acc=0.9, size=2000)]
    ax = pareto.plot(vs, x="latency_ms", highlight="a")
    assert ax.get_xlabel().startswith("measured latency") and ax.get_title()
    assert pareto.explorer(vs) is None
    with pytest.raises(ValueError, match="x must be one of"):
        pareto.plot(vs, x="params")
    with pytest.raises(TypeError, match="variants must be"):
        pareto.plot([{"name": "a"}])


def test_write_variants_replaces_only_the_notebooks_run(tmp_path, capsys):
    (tmp_path / "variants.json").write_text(json.dumps([asdict(variant("old 02")),
                                                        asdict(variant("old 05", notebook="05_knowledge_distillation"))]))
    live = tmp_path / ".variants-9.jsonl"
    live.write_text(json.dumps(asdict(variant("new 02"))) + "\n")
    page = run.write_variants(tmp_path, live, ["02_pruning_in_practice"])
    names = [v.name for v in report.read_variants(tmp_path / "variants.json")]
    assert names == ["old 05", "new 02"] and page == tmp_path / "pareto.html" and page.exists()
