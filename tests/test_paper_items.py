"""The paper items as data: the runs each needs per profile (rows, settings, seeds, data roots) and the notebooks."""

from __future__ import annotations

import pytest

from mkdlib.config import PROFILES, paper_config
from mkdlib.paper import items, notebook
from mkdlib.paper.numbers import PAPER


def test_items_match_the_paper_tables():
    assert set(items.ITEMS) == set(PAPER) - {"table1"}  # Table 1 is built from Table 11's tables
    for it in items.ITEMS.values():
        assert list(it.rows) == PAPER[it.id].classes, it.id
        assert set(it.smoke_rows) <= set(it.rows), it.id
        for name, s in it.settings.items():
            assert s.column in PAPER[it.id].columns, (it.id, name)
            paper_config(it.rows[it.smoke_rows[0]].dataset, **s.config)  # valid overrides
    assert items.ITEMS["table11"].summary == "table1"
    keys = {k for v in notebook.NOTEBOOKS.values() for k in v}
    assert set(items.ITEMS) | set(items.FIGURES) | {"table1", "quickstart", "method", "fast_vs_paper"} == keys


def test_paper_profile_run_keys_are_pinned():
    # Finished runs in results/runs are found by these keys: a change here orphans them.
    assert items.specs_for("table2_mnist", "paper")[0].key() == "525a9b82cb562ca5"
    assert items.specs_for("table3", "paper", classes=["bottle"])[0].key() == "666cdf9151e78d19"
    assert items.specs_for("table6", "paper", classes=["brainmri"])[0].key() == "9a122701a72f1c65"


def test_paper_profile_specs_cover_every_class_and_share_runs():
    specs = items.specs_for("table9", "paper")
    assert len(specs) == 15 * 4  # SmallerNet and Total Loss are one run per category
    full = [s for s in specs if s.normal_class == "bottle" and not set(s.config) & {"cloner", "value_weight"}]
    assert len(full) == 1 and full[0].localization == items.FULL_MVTEC and full[0].weights == "imagenet"
    # the full method on MVTec AD is the same run in Tables 3, 4, 7, 9 and 11 (same key, same cache entry)
    keys = {items.specs_for(i, "paper", classes=["bottle"], settings=[s])[0].key()
            for i, s in (("table3", ""), ("table4", ""), ("table7", "last_4"), ("table9", "total_loss"),
                         ("table11", "gbp_gaussian"))}
    assert keys == {full[0].key()}
    paper = items.specs_for("table3", "paper")
    assert all(s.config == {} and s.max_train is None and s.max_test is None for s in paper)
    assert len(items.specs_for("table6", "paper")) == 3 * 5  # 5 seeded splits per row
    assert [s.config for s in items.specs_for("table6", "paper", seeds=[0])] == [{}, {}, {"augment": True}]
    last1 = items.specs_for("table8", "paper", classes=["3"], settings=["last_1"])[0]
    assert last1.normal_class == 3 and last1.config == {"train_layers": ["pool5"], "score_layers": ["pool5"]}


def test_smoke_profile_is_small_and_labelled(monkeypatch):
    monkeypatch.delenv("MKDLIB_VGG16_WEIGHTS", raising=False)
    specs = items.specs_for("table3", "smoke")
    assert [s.normal_class for s in specs] == ["leather"]
    s = specs[0]
    assert s.config["epochs"] <= 2 and s.config["image_size"] == 64 and s.max_train == 64 and s.max_test == 100
    assert s.weights is None  # no weights at hand: a random source, so CI runs without shared data
    monkeypatch.setenv("MKDLIB_VGG16_WEIGHTS", "/some/vgg16.pth")
    assert items.specs_for("table3", "smoke")[0].weights == "imagenet"
    assert len(items.specs_for("table6", "smoke")) == 3 * 2
    assert items.specs_for("table11", "smoke")[0].max_test == items.SMOKE_MAX_TEST["table11"]
    assert "NOT paper numbers" in PROFILES["smoke"].label
    with pytest.raises(ValueError, match="unknown profile"):
        items.specs_for("table3", "quick")


def test_classes_by_list_item_or_dataset():
    assert items.rows_for("table3", "paper", {"mvtec": ["screw"]}) == ["screw"]
    assert items.rows_for("table7", "smoke", {"table7": ["grid"], "mvtec": ["screw"]}) == ["grid"]
    assert items.rows_for("table6", "smoke", {"headct": ["headct"]}) == list(items.ITEMS["table6"].smoke_rows)
    assert items.rows_for("table2_mnist", "paper", {}) == [str(d) for d in range(10)]
    assert items.rows_for("table2_cifar10", "paper", ["cat"]) == ["cat"]
    with pytest.raises(ValueError, match="unknown classes"):
        items.rows_for("table3", "paper", ["bottel"])


def test_data_roots_per_dataset():
    specs = items.specs_for("table6", "smoke", seeds=[0], data_root="/d", data_roots={"headct": "/h"})
    assert {(s.dataset, s.data_root) for s in specs} == {("brainmri", "/d"), ("headct", "/h")}


def test_notebooks_lookup():
    assert notebook.notebooks_for("table9") == ["figure4_tables9_10_cloner_size", "figure5_tables9_10_loss_ablation"]
    assert notebook.notebooks_for("figure6") == ["table4_figure6_mvtec_localization"]
    with pytest.raises(KeyError):
        notebook.notebooks_for("table12")




def test_outputs_name_every_table_a_notebook_writes():
    assert notebook.outputs("00_quickstart") == notebook.outputs("figure1_heatmaps") == {}
    assert notebook.outputs("table3_mvtec_detection") == {"table3": ("table3", "")}
    assert list(notebook.outputs("table4_figure6_mvtec_localization")) == ["table4", "table4_pixel_auroc", "table4_au_pro"]
    t11 = notebook.outputs("table1_table11_interpretability")
    assert t11["table1"] == ("table11", None) and t11["table11_gbp"] == ("table11", "gbp") and len(t11) == 9
    cloner, loss = notebook.outputs("figure4_tables9_10_cloner_size"), notebook.outputs("figure5_tables9_10_loss_ablation")
    assert set(cloner) == {"table9_equal_net", "table9_smaller_net", "table10_equal_net", "table10_smaller_net"}
    assert set(loss) == {f"table{n}_{s}" for n in (9, 10) for s in ("dir_loss", "mse_loss", "total_loss")}
