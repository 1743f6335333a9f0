import pytest
import torch

from metaloss.losses import fusion_loss, max_abs, sobel


def img(rows):
    return torch.tensor(rows, dtype=torch.float64)[None, None]


def naive_sobel(x):
    """Direct 3x3 cross-correlation with zero padding, pixel by pixel."""
    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    h, w = x.shape
    pad = [[0.0] * (w + 2)] + [[0.0] + list(map(float, r)) + [0.0] for r in x.tolist()] + [[0.0] * (w + 2)]
    gx = [[sum(kx[i][j] * pad[r + i][c + j] for i in range(3) for j in range(3)) for c in range(w)] for r in range(h)]
    gy = [[sum(kx[j][i] * pad[r + i][c + j] for i in range(3) for j in range(3)) for c in range(w)] for r in range(h)]
    return torch.tensor(gx, dtype=torch.float64), torch.tensor(gy, dtype=torch.float64)


def test_sobel_ramp_and_zero_padding():
    x = img([[0, 1, 2, 3]] * 4)
    gx, gy = sobel(x)
    assert torch.equal(gx[0, 0, 1:3, 1:3], torch.full((2, 2), 8.0, dtype=torch.float64))
    assert torch.equal(gy[0, 0, 1:3, :], torch.zeros(2, 4, dtype=torch.float64))
    assert gy[0, 0, 0, 1] == 4.0  # the zero row above: 1*0 + 2*1 + 1*2 below
    assert gx[0, 0, 0, 0] == 1.0 * 2 * 1 + 1.0 * 1  # 2*x[0,1] + x[1,1] (left column and top row padded)


def test_sobel_matches_naive():
    x = torch.rand(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gx, gy = sobel(x[None, None])
    nx, ny = naive_sobel(x)
    assert torch.allclose(gx[0, 0], nx) and torch.allclose(gy[0, 0], ny)


def test_max_abs_keeps_sign_and_ties_go_to_first():
    a = torch.tensor([-3.0, 1.0, 2.0, -2.0])
    b = torch.tensor([2.0, -4.0, -2.0, 2.0])
    assert max_abs(a, b).tolist() == [-3.0, -4.0, 2.0, -2.0]


F = img([[0.5, 0.5], [0.5, 0.5]])
A = img([[1, 0], [0, 0]])
B = img([[0, 0], [0, 1]])
WA = img([[1, 0.5], [0.5, 0]])
W = torch.cat([WA, 1 - WA], dim=1)


def test_intensity_linear_form_by_hand():
    # mean(w_a (f-a)^2) = (0.25 + 0.125 + 0.125 + 0)/4 ; same for b by symmetry
    loss = fusion_loss(F, A, B, {"intensity": W}, alpha=0.0)
    assert loss.intensity.item() == pytest.approx(0.25)
    assert loss.total.item() == pytest.approx(0.25)


def test_intensity_squared_form_by_hand():
    # mean(w_a^2 (f-a)^2) = (0.25 + 0.0625 + 0.0625 + 0)/4 = 0.09375, twice
    loss = fusion_loss(F, A, B, {"intensity": W}, alpha=0.0, weight_form="squared")
    assert loss.intensity.item() == pytest.approx(0.1875)


def test_gradient_max_rule_against_naive():
    g = torch.Generator().manual_seed(1)
    f, a, b = (torch.rand(4, 5, dtype=torch.float64, generator=g) for _ in range(3))
    (fx, fy), (ax, ay), (bx, by) = naive_sobel(f), naive_sobel(a), naive_sobel(b)
    pick = lambda u, v: torch.where(u.abs() >= v.abs(), u, v)
    expected = (fx - pick(ax, bx)).abs().mean() + (fy - pick(ay, by)).abs().mean()
    w = torch.full((1, 2, 4, 5), 0.5, dtype=torch.float64)
    loss = fusion_loss(f[None, None], a[None, None], b[None, None], {"intensity": w}, alpha=2.0)
    assert loss.gradient.item() == pytest.approx(expected.item(), rel=1e-12)
    assert loss.total.item() == pytest.approx(loss.intensity.item() + 2.0 * expected.item(), rel=1e-12)


def test_gradient_weights_replace_max_rule():
    g = torch.Generator().manual_seed(2)
    f, a, b = (torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=g) for _ in range(3))
    v = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=g)
    (fx, fy), (ax, ay), (bx, by) = sobel(f), sobel(a), sobel(b)
    expected = (v * (fx - ax).abs()).mean() + ((1 - v) * (fx - bx).abs()).mean()
    expected = expected + (v * (fy - ay).abs()).mean() + ((1 - v) * (fy - by).abs()).mean()
    maps = {"intensity": torch.cat([v, 1 - v], 1), "gradient": torch.cat([v, 1 - v], 1)}
    assert fusion_loss(f, a, b, maps).gradient.item() == pytest.approx(expected.item(), rel=1e-12)


def test_fused_equal_to_a_source_with_full_weight_has_zero_intensity_loss():
    w = torch.cat([torch.ones_like(A), torch.zeros_like(A)], 1)
    assert fusion_loss(A, A, B, {"intensity": w}).intensity.item() == 0.0


def test_bad_maps_are_refused():
    with pytest.raises(KeyError, match="intensity"):
        fusion_loss(F, A, B, {})
    with pytest.raises(ValueError, match=r"\[B, 2, H, W\]"):
        fusion_loss(F, A, B, {"intensity": WA})
    with pytest.raises(ValueError, match="weight_form"):
        fusion_loss(F, A, B, {"intensity": W}, weight_form="cubic")  # type: ignore[arg-type]


def test_fixed_generator_is_the_equal_weight_baseline():
    from metaloss.models.conv_generator import FixedLossGenerator

    maps = FixedLossGenerator()(A.float(), B.float())
    assert torch.equal(maps["intensity"], torch.full((1, 2, 2, 2), 0.5))
    assert list(FixedLossGenerator().parameters()) == []
    with pytest.raises(ValueError, match="ir_weight"):
        FixedLossGenerator(1.5)


def test_fixed_generator_gradient_weights() -> None:
    from metaloss.models.conv_generator import FixedLossGenerator

    ir, vi = torch.rand(2, 1, 5, 6), torch.rand(2, 1, 5, 6)
    maps = FixedLossGenerator(0.5, ir_gradient_weight=0.25)(ir, vi)
    assert maps["gradient"].shape == (2, 2, 5, 6)
    assert torch.all(maps["gradient"][:, 0] == 0.25) and torch.all(maps["gradient"][:, 1] == 0.75)
    assert "gradient" not in FixedLossGenerator(0.5)(ir, vi)
    with pytest.raises(ValueError, match="ir_gradient_weight"):
        FixedLossGenerator(0.5, ir_gradient_weight=-0.1)


def test_max_rule_with_the_l1_norm_is_the_max_intensity_loss() -> None:
    """FixedLossGenerator(intensity_rule="max") with intensity_norm="l1": L_int = mean|I_f - max(I_a, I_b)|
    (SeAFusion, PIAFusion); with "l2" the squared distance to the maximum."""
    from metaloss.models.conv_generator import FixedLossGenerator

    g = torch.Generator().manual_seed(0)
    ir, vi, fused = (torch.rand(2, 1, 6, 7, generator=g, dtype=torch.float64) for _ in range(3))
    vi[0, 0, 0, 0] = ir[0, 0, 0, 0]  # a tie goes to the infrared image
    maps = FixedLossGenerator(intensity_rule="max")(ir, vi)
    assert maps["intensity"][0, :, 0, 0].tolist() == [1.0, 0.0]
    target = torch.maximum(ir, vi)
    l1 = fusion_loss(fused, ir, vi, maps, alpha=0.0, intensity_norm="l1")
    l2 = fusion_loss(fused, ir, vi, maps, alpha=0.0)
    torch.testing.assert_close(l1.intensity, (fused - target).abs().mean() * 1.0, rtol=1e-12, atol=0)
    torch.testing.assert_close(l2.intensity, (fused - target).square().mean(), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="intensity_norm"):
        fusion_loss(fused, ir, vi, maps, intensity_norm="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="intensity_rule"):
        FixedLossGenerator(intensity_rule="min")  # type: ignore[arg-type]


def test_gradient_target_intensity_is_the_gradient_of_the_intensity_target() -> None:
    """gradient_target="intensity": L_grad = mean|S_d I_f - S_d T| with T = w_a I_a + w_b I_b, by hand
    (naive Sobel); zero when I_f is that target; refused with gradient weights V or a wrong name."""
    g = torch.Generator().manual_seed(3)
    f, a, b, wa = (torch.rand(5, 6, dtype=torch.float64, generator=g) for _ in range(4))
    target = wa * a + (1 - wa) * b
    (fx, fy), (tx, ty) = naive_sobel(f), naive_sobel(target)
    expected = (fx - tx).abs().mean() + (fy - ty).abs().mean()
    maps = {"intensity": torch.stack([wa, 1 - wa])[None]}
    four = lambda x: x[None, None]
    loss = fusion_loss(four(f), four(a), four(b), maps, alpha=3.0, gradient_target="intensity")
    assert loss.gradient.item() == pytest.approx(expected.item(), rel=1e-12)
    assert loss.total.item() == pytest.approx(loss.intensity.item() + 3.0 * expected.item(), rel=1e-12)
    at_target = fusion_loss(four(target), four(a), four(b), maps, gradient_target="intensity")
    assert at_target.gradient.item() == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="gradient weights"):
        fusion_loss(four(f), four(a), four(b), {**maps, "gradient": maps["intensity"]}, gradient_target="intensity")
    with pytest.raises(ValueError, match="gradient_target"):
        fusion_loss(four(f), four(a), four(b), maps, gradient_target="sum")  # type: ignore[arg-type]


def test_ssim_map_matches_scikit_image_and_the_term_enters_the_loss():
    """ssim_map: scikit-image's Gaussian SSIM (sigma 1.5, population covariance, data range 1) over the
    same windows; beta * (1 - (SSIM(F, A) + SSIM(F, B)) / 2) is added to L_f and logged as 'structure'."""
    from skimage.metrics import structural_similarity

    from metaloss.losses import ssim_map

    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 30, 40, dtype=torch.float64, generator=g)
    b = (a + 0.3 * torch.rand(a.shape, dtype=torch.float64, generator=g)).clamp(0, 1)
    expected = structural_similarity(
        a[0, 0].numpy(), b[0, 0].numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
    )
    assert ssim_map(a, b).mean().item() == pytest.approx(expected, rel=1e-10)
    assert ssim_map(a, a).mean().item() == pytest.approx(1.0)
    w = torch.full((1, 2, 30, 40), 0.5, dtype=torch.float64)
    fused = (a + b) / 2
    plain = fusion_loss(fused, a, b, {"intensity": w})
    with_ssim = fusion_loss(fused, a, b, {"intensity": w}, ssim_weight=2.0)
    structure = 1 - (ssim_map(fused, a).mean() + ssim_map(fused, b).mean()) / 2
    assert plain.structure is None and "structure" not in plain.terms
    assert with_ssim.structure.item() == pytest.approx(structure.item())
    assert with_ssim.total.item() == pytest.approx(plain.total.item() + 2.0 * structure.item())
    assert set(with_ssim.terms) == {"intensity", "gradient", "structure"}
    small = torch.rand(1, 1, 5, 6, dtype=torch.float64, generator=g)  # the window shrinks to 5 x 5
    assert ssim_map(small, small).shape == (1, 1, 1, 2)
