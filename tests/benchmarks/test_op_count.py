"""benchmarks.op_count: the operator count of a meta-step is a deterministic measure of its work."""

from benchmarks.op_count import count


def test_operator_count_is_deterministic_and_names_the_operators():
    first, second = count("torch.func", 48), count("torch.func", 48)
    assert first["operators"] == second["operators"] == sum(first["by_operator"].values())
    assert first["by_operator"]["aten.convolution.default"] > 0  # the networks ran inside the mode
    assert first["python_calls"] > first["operators"] / 10
