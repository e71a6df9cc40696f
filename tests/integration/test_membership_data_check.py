"""A membership audit is refused on a prepared folder whose member split is not what the run trained on (it
would otherwise report an AUC for "members" the model never saw)."""

from __future__ import annotations

import pytest

from meddenoise.errors import ConfigError
from meddenoise.privacy.membership import run_membership_audit


def test_an_audit_on_other_data_is_refused_and_on_the_runs_own_data_runs(make_prepared, tiny_fit, tmp_path):
    own = make_prepared(n=32, size=16, patients=16, seed=0)
    other = make_prepared(n=32, size=16, patients=16, seed=1)
    run = tiny_fit(own, tmp_path / "run", epochs=1)
    options = dict(out=tmp_path / "audit", reference_models=0, max_images=16, device="cpu")
    with pytest.raises(ConfigError, match="not what the run .* trained on: .* training images are not in it"):
        run_membership_audit(run, data_dir=str(other), **options)
    result = run_membership_audit(run, data_dir=str(own), **options)
    assert result  # the run's own folder passes the check and is audited
