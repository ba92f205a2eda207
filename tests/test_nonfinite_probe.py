"""benchmarks/nonfinite_probe.py: it reports finite passes as finite and names the op that returns NaN."""

import torch

from benchmarks import nonfinite_probe


def test_probe_reports_a_finite_pass(capsys):
    nonfinite_probe.probe_velocity("tiny-random-sd3", "fp32", "cpu", ["MATH"], sigma=0.9)
    out = capsys.readouterr().out
    assert "MATH                 output finite True; non-finite grads 0/" in out
    assert "anomaly" not in out


def test_probe_names_the_backward_op_that_returns_nan(capsys, monkeypatch):
    from genrl import models

    real_load = models.load

    def load_with_a_nan_backward(name, **options):
        model = real_load(name, **options)
        velocity = model.velocity

        def poisoned(x, sigma, cond):  # finite forward, NaN gradient (sqrt's backward at 0: 0/0)
            v = velocity(x, sigma, cond)
            return v + torch.sqrt(v - v.detach()) * 0
        model.velocity = poisoned
        return model

    monkeypatch.setattr(models, "load", load_with_a_nan_backward)
    nonfinite_probe.probe_velocity("tiny-random-sd3", "fp32", "cpu", ["MATH"], sigma=0.9)
    out = capsys.readouterr().out
    assert "output finite True" in out
    assert "anomaly: Function 'SqrtBackward0' returned nan values" in out
