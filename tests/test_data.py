import numpy as np
import pytest
import soundfile as sf

from acula_edge.data import (Dataset, Recording, leave_one_group_out, load_dataset, order_labels, scan_audio,
                             stratified_holdout)
from acula_edge.errors import DatasetError


def write_folder(root, rows, header="path,label,subset"):
    root.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for name, label, subset in rows:
        sf.write(root / name, np.zeros(4000, np.float32) + 0.01, 2000)
        lines.append(f"{name},{label},{subset}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_labels_csv_folder(tmp_path):
    write_folder(tmp_path / "d", [("x1.wav", "abnormal", "a"), ("x2.wav", "normal", "b"), ("x3.wav", "murmur", "b")])
    ds = load_dataset(tmp_path / "d")
    assert len(ds) == 3
    assert ds.labels == ("normal", "abnormal", "murmur")
    assert ds.recordings[0].metadata == {"subset": "a"}
    assert ds.recordings[0].load(2000).shape == (4000,)
    assert load_dataset(tmp_path / "d" / "labels.csv").labels == ds.labels


def test_reference_csv_layout(tmp_path):
    root = tmp_path / "training-z"
    root.mkdir()
    for rec in ("z1", "z2"):
        sf.write(root / f"{rec}.wav", np.zeros(100, np.float32), 2000)
    (root / "REFERENCE.csv").write_text("z1,-1\nz2,1\n")
    ds = load_dataset(root)
    assert [(r.record_id, r.label, r.metadata["subset"]) for r in ds] == [("z1", "normal", "training-z"),
                                                                          ("z2", "abnormal", "training-z")]


def test_label_file_problems_are_all_reported(tmp_path):
    root = tmp_path / "d"
    write_folder(root, [("x1.wav", "normal", "a")])
    (root / "labels.csv").write_text("path,label,subset\nx1.wav,normal,a\nmissing.wav,normal,a\nx1.wav,normal\n")
    with pytest.raises(DatasetError) as e:
        load_dataset(root)
    assert len(e.value.problems) == 2
    assert "missing.wav does not exist" in str(e.value) and ":4: 2 fields" in str(e.value)


@pytest.mark.parametrize("spec,message", [("/no/such/place", "is not a dataset"),
                                          ("synthetic:heart?n=2&colour=red", "unknown option")])
def test_bad_specs(spec, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec)


def test_folder_without_labels(tmp_path):
    with pytest.raises(DatasetError, match="no labels.csv"):
        load_dataset(tmp_path)


def test_scan_reports_every_bad_file(tmp_path):
    root = tmp_path / "d"
    write_folder(root, [("x1.wav", "normal", "a"), ("x2.wav", "normal", "a"), ("x3.wav", "normal", "a")])
    (root / "x1.wav").write_bytes(b"")
    (root / "x3.wav").write_bytes(b"junk" * 10)
    problems = scan_audio(load_dataset(root), 2000)
    assert len(problems) == 2 and "x1.wav" in problems[0] and "x3.wav" in problems[1]


def make_groups():
    recs = [Recording(f"r{i}", ["normal", "abnormal"][i % 2], {"site": "ABC"[i % 3]}) for i in range(12)]
    return Dataset("toy", tuple(recs))


def test_leave_one_group_out_never_leaks():
    ds = make_groups()
    folds = leave_one_group_out(ds, "site")
    assert [g for g, _, _ in folds] == ["A", "B", "C"]
    for g, train, test in folds:
        assert {r.metadata["site"] for r in test} == {g}
        assert g not in {r.metadata["site"] for r in train}
        assert len(train) + len(test) == len(ds)
    with pytest.raises(DatasetError, match="not found"):
        leave_one_group_out(ds, "site", ["Z"])
    with pytest.raises(DatasetError, match="available columns"):
        leave_one_group_out(ds, "hospital")


def test_stratified_holdout_by_label_and_by_group():
    ds = make_groups()
    train, held = stratified_holdout(ds, 0.25, seed=1)
    assert len(train) + len(held) == 12 and {r.label for r in held} == {"normal", "abnormal"}
    train, held = stratified_holdout(ds, 0.34, seed=1, group_column="site")
    assert not ({r.metadata["site"] for r in train} & {r.metadata["site"] for r in held})


def test_order_labels_puts_a_negative_class_first():
    assert order_labels(["wheeze", "normal", "crackle"]) == ("normal", "crackle", "wheeze")
    assert order_labels(["b", "a"]) == ("a", "b")


@pytest.mark.shared_data
def test_physionet_folder_loads_with_metadata(physionet_dir):
    ds = load_dataset(physionet_dir)
    assert len(ds) == 1099
    assert ds.labels == ("normal", "abnormal")
    assert sorted(set(ds.group_values("subset"))) == ["a", "b", "c", "d", "f"]
    x = ds.recordings[0].load(2000)
    assert x.dtype == np.float32 and x.shape[0] > 2000 * 5


def test_spec_filters_select_and_drop_groups(tmp_path):
    from acula_edge.data import split_filter, with_filter

    write_folder(tmp_path / "d", [("x1.wav", "abnormal", "a"), ("x2.wav", "normal", "b"), ("x3.wav", "normal", "c")])
    spec = str(tmp_path / "d")
    assert [r.metadata["subset"] for r in load_dataset(spec + "[subset=a,c]")] == ["a", "c"]
    assert [r.metadata["subset"] for r in load_dataset(with_filter(spec, "subset", ["b"], keep=False))] == ["a", "c"]
    assert split_filter("synthetic:heart?n=4[subset!=D]") == ("synthetic:heart?n=4", "subset", ["D"], False)
    with pytest.raises(DatasetError, match="filter must look like"):
        load_dataset(spec + "[subset]")
    with pytest.raises(DatasetError, match="not found|no metadata column"):
        load_dataset(spec + "[site=a]")
