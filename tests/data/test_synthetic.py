import torch

from metaloss.data.collate import collate_pairs
from metaloss.data.synthetic import SyntheticScenes


def test_deterministic_by_seed_and_distinct_by_split():
    a, b = SyntheticScenes(4, 32, 48, seed=3), SyntheticScenes(4, 32, 48, seed=3)
    for i in range(4):
        assert torch.equal(a[i]["ir"], b[i]["ir"]) and torch.equal(a[i]["mask"], b[i]["mask"])
    assert not torch.equal(SyntheticScenes(1, 32, 48, seed=4)[0]["ir"], a[0]["ir"])
    assert not torch.equal(SyntheticScenes(1, 32, 48, seed=3, split="val")[0]["ir"], a[0]["ir"])


def test_shapes_ranges_and_labels():
    ds = SyntheticScenes(8, 40, 56, objects=(2, 3))
    s = ds[0]
    assert s["ir"].shape == s["vi"].shape == (1, 40, 56) and s["mask"].shape == (40, 56)
    assert 0 <= s["ir"].min() and s["ir"].max() <= 1 and 0 <= s["vi"].min() and s["vi"].max() <= 1
    assert set(s["mask"].unique().tolist()) <= {0, 1, 2}
    assert s["boxes"].shape[1] == 5 and 1 <= len(s["boxes"]) <= 3
    assert ((s["boxes"][:, 1:] >= 0) & (s["boxes"][:, 1:] <= 1)).all()


def test_objects_are_warm_in_infrared_and_nearly_invisible_in_visible():
    ds = SyntheticScenes(16, 64, 64, objects=(1, 3))
    ir_contrast, vi_contrast = [], []
    for i in range(len(ds)):
        s = ds[i]
        obj = s["mask"] > 0
        if obj.any() and (~obj).any():
            ir_contrast.append(s["ir"][0][obj].mean() - s["ir"][0][~obj].mean())
            vi_contrast.append((s["vi"][0][obj].mean() - s["vi"][0][~obj].mean()).abs())
    assert len(ir_contrast) >= 12
    assert min(ir_contrast) > 0.25  # objects clearly warmer than the background
    # and hard to see in the visible image (objects sometimes sit on a visible-only structure)
    assert all(v < 0.5 * i for v, i in zip(vi_contrast, ir_contrast, strict=True))
    assert sum(vi_contrast) / len(vi_contrast) < 0.1 < 0.3 < sum(ir_contrast) / len(ir_contrast)
    # The visible image carries the texture: more high-frequency energy than the infrared background.
    s = ds[0]
    hf = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()
    assert hf(s["vi"]) > 2 * hf(s["ir"][0][s["mask"] == 0][None])


def test_boxes_enclose_the_mask():
    s = SyntheticScenes(1, 48, 64, objects=(1, 1), seed=5)[0]
    cls, cx, _cy, _w, h = s["boxes"][0].tolist()
    ys, xs = torch.nonzero(s["mask"] == int(cls) + 1, as_tuple=True)
    assert abs((xs.min() + xs.max() + 1) / 2 / 64 - cx) < 1e-6 and abs((ys.max() + 1 - ys.min()) / 48 - h) < 1e-6


def test_collate_builds_ultralytics_box_layout():
    ds = SyntheticScenes(3, 32, 32, objects=(1, 2))
    batch = collate_pairs([ds[i] for i in range(3)])
    assert batch["ir"].shape == (3, 1, 32, 32) and batch["mask"].shape == (3, 32, 32)
    boxes = batch["boxes"]
    assert boxes.shape[1] == 6
    counts = [len(ds[i]["boxes"]) for i in range(3)]
    assert [int((boxes[:, 0] == i).sum()) for i in range(3)] == counts
    assert batch["name"] == [ds[i]["name"] for i in range(3)]


def test_complementary_scenes_label_visible_only_markings_and_occlude_the_texture():
    ds = SyntheticScenes(16, 64, 64, objects=(1, 3), complementary=True)
    assert ds.num_classes == 4 and ds.class_names[-1] == "marking"
    assert ds.num_box_classes == 3 and ds.box_class_names[-1] == "marking"
    assert SyntheticScenes.num_classes == 3  # the default scenes are unchanged
    marks_vi, marks_ir, texture_inside, texture_outside = [], [], [], []
    for i in range(len(ds)):
        s = ds[i]
        ir, vi, mask = s["ir"][0], s["vi"][0], s["mask"]
        marks, objects, plain = mask == 3, (mask == 1) | (mask == 2), mask == 0
        assert set(s["boxes"][:, 0].long().tolist()) <= {0, 1, 2}
        if marks.any():
            marks_vi.append(float((vi[marks].mean() - vi[plain].mean()).abs()))
            marks_ir.append(float((ir[marks].mean() - ir[plain].mean()).abs()))
        if objects.sum() > 20:
            texture_inside.append(float(vi[objects].std()))
            texture_outside.append(float(vi[plain].std()))
    assert len(marks_vi) >= 12 and len(texture_inside) >= 10
    # markings: seen in the visible image; in the infrared one only the background's own variation
    mean_vi, mean_ir = sum(marks_vi) / len(marks_vi), sum(marks_ir) / len(marks_ir)
    assert mean_vi > 0.1 and mean_ir < 0.05 and mean_ir < 0.4 * mean_vi
    # objects hide the visible texture behind them (flat patch)
    assert sum(texture_inside) / len(texture_inside) < 0.3 * sum(texture_outside) / len(texture_outside)
