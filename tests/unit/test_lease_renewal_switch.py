"""The chaos suite's test switch PROV_TEST_DISABLE_LEASE_RENEWAL: off unless set to exactly 1."""

from __future__ import annotations

import pytest

from core.errors import SettingsError
from core.runtime.settings import AgentSettings


def test_lease_renewal_is_on_unless_the_test_switch_is_set():
    assert not AgentSettings.from_env({}).test_disable_lease_renewal
    assert not AgentSettings.from_env(
        {"PROV_TEST_DISABLE_LEASE_RENEWAL": "0"}
    ).test_disable_lease_renewal
    assert AgentSettings.from_env(
        {"PROV_TEST_DISABLE_LEASE_RENEWAL": "1"}
    ).test_disable_lease_renewal


def test_the_lease_renewal_switch_refuses_anything_but_0_or_1():
    with pytest.raises(SettingsError, match="PROV_TEST_DISABLE_LEASE_RENEWAL"):
        AgentSettings.from_env({"PROV_TEST_DISABLE_LEASE_RENEWAL": "yes"})
