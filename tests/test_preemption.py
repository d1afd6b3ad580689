"""Multi-process stop requests rest on public JAX APIs, and a job that cannot agree on its stop step is refused."""
import jax
import pytest

from hold_jax.training import preemption


def test_one_process_uses_its_own_signal_flag(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  assert not preemption.library_sync_available()


def test_several_processes_with_the_sync_service_agree_through_jax(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  assert preemption.library_sync_available()


def test_several_processes_without_the_sync_are_refused_naming_the_version(monkeypatch):
  """Falling back to per-process flags would let the processes save different steps."""
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  with pytest.raises(preemption.PreemptionSyncUnavailable, match=rf"4 processes .*jax {jax.__version__}.*--distributed"):
    preemption.library_sync_available()
  with pytest.raises(preemption.PreemptionSyncUnavailable):
    preemption.StopRequests(lambda step: False)


def test_a_jax_without_the_public_api_is_named(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.delattr(jax.distributed, "is_initialized")
  with pytest.raises(preemption.PreemptionSyncUnavailable, match=rf"jax {jax.__version__} lacks a public API"):
    preemption.library_sync_available()
