"""The served app's Streamlit settings, read the way Streamlit reads them (a misspelt key is ignored
by Streamlit, so reading the TOML alone would not catch it)."""

from pathlib import Path

import pytest
from streamlit import config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def option(monkeypatch):
    monkeypatch.chdir(ROOT)  # Streamlit reads ./.streamlit/config.toml from the working directory
    config.get_config_options(force_reparse=True)
    yield config.get_option
    monkeypatch.undo()
    config.get_config_options(force_reparse=True)


def test_a_classroom_server_does_not_phone_home(option):
    assert option("browser.gatherUsageStats") is False


def test_users_see_messages_not_tracebacks_and_forms_are_xsrf_protected(option):
    assert option("client.showErrorDetails") == "none"
    assert option("server.enableXsrfProtection") is True


def test_a_served_app_never_watches_or_reloads_its_code(option):
    assert option("server.fileWatcherType") == "none"
    assert option("server.runOnSave") is False


def test_no_full_garbage_collection_after_every_rerun(option):
    # Left on, 20 live pages' reruns kept the GIL busy with gc.collect() and no run finished.
    assert option("runner.postScriptGC") is False


def test_large_elements_are_sent_whole_never_as_references_to_the_browsers_cache(option):
    # The browser forgets a cached message after one fragment run; a full rerun referring to one it
    # had just dropped closed the page's connection for good under load ("Cached ForwardMsg MISS").
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from streamlit.runtime.forward_msg_cache import populate_hash_if_needed

    msg = ForwardMsg()
    msg.delta.new_element.markdown.body = "x" * 2_000_000  # larger than any chart the pages draw
    populate_hash_if_needed(msg)
    assert msg.hash and not msg.metadata.cacheable
