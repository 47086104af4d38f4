"""Fuzzing the validator: random forms against random valid manifests.

`validate_inputs` raises FormError and nothing else, its output validates to itself, and no
error ever repeats a submitted password. `_validate` (the validator without its last-resort
guard that turns any exception into a FormError) is fuzzed too: the guard keeps hostile input
from crashing the panel, but an exception reaching it is still a bug worth finding.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from core.errors import FormError
from core.validation import Value, _validate, validate_inputs
from tests.property.manifest_strategies import submissions, valid_manifests
from tests.property.timing import timed

Outcome = tuple[dict[str, Value] | None, FormError | None]


def _attempt(call: Callable[[], dict[str, Value]]) -> Outcome:
    try:
        return call(), None
    except FormError as error:
        return None, error


@given(st.data())
def test_random_forms_give_values_or_a_form_error_and_values_validate_to_themselves(data):
    manifest = data.draw(valid_manifests())
    form = data.draw(submissions(manifest))
    values, error = _attempt(lambda: timed("_validate", form, lambda: _validate(manifest, form)))
    if error is not None:
        assert error.errors and all(isinstance(message, str) for message in error.errors.values())
        return
    assert values is not None
    assert values == validate_inputs(manifest, form)
    # Idempotence: what the panel signs, the agent re-validates to the very same values.
    assert timed("validate_inputs", values, lambda: validate_inputs(manifest, values)) == values
    for name, value in values.items():
        spec = manifest.input(name)
        assert spec is not None
        if spec.type == "multiselect":
            assert isinstance(value, list) and all(isinstance(item, str) for item in value)
        else:
            assert isinstance(value, str)


@given(st.data())
def test_a_refused_password_is_never_repeated_in_the_error(data):
    manifest = data.draw(valid_manifests(with_password=True))
    form = data.draw(submissions(manifest))
    core = data.draw(st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=10))
    # Broken on purpose, in one of the ways the password field refuses.
    secret = data.draw(
        st.sampled_from(
            [
                f"pw-{core}!",  # outside the pattern
                f"pw-{core}" + "x" * 40,  # too long
                f"pw-{core}\x00",  # NUL
                f"pw-{core}\nsecond line",
                f"pw-{core}\u2028",
            ]
        )
    )
    # Only the password may carry its text, so finding it in the error means it leaked.
    assume(core not in repr(form))
    form["zz_secret"] = secret
    with pytest.raises(FormError) as refused:
        validate_inputs(manifest, form)
    shown = str(refused.value) + repr(refused.value.errors) + repr(refused.value.args)
    assert core not in shown
    assert "zz_secret" in refused.value.errors


@given(st.data())
def test_submissions_of_any_shape_give_a_form_error(data):
    manifest = data.draw(valid_manifests())
    form = data.draw(
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=20),
            st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=3),
            st.binary(max_size=10),
        )
    )
    with pytest.raises(FormError) as refused:
        validate_inputs(manifest, form)
    assert refused.value.errors
