"""Links in a real browser: a deep link as a server's very first request, and run links shared
with other people (they open a run read-only)."""

import re
import time

import pytest

from tests.browser.browser_helpers import (
    assert_no_exception,
    go_to,
    new_context,
    open_app,
    serve,
    set_epochs,
    sync_api,
    wait_for_status,
)

pytestmark = pytest.mark.browser

expect = sync_api.expect
PAGES = ["Lessons", "Data", "Model", "Train", "Feature maps", "Saliency", "Domain shift", "Evaluate", "Use the model"]


def finished_run(data_dir) -> str:
    """A finished run on disk before the server starts, as after a restart."""
    from core.runs import RunRecord, RunStore, new_run_id

    run_id = new_run_id()
    RunStore(data_dir).create(RunRecord(
        id=run_id, status="finished", created=time.time() - 60, finished=time.time() - 30,
        backbone="efficientnet_lite0", pretrained=True, classes=["circle", "square"], config={"epochs": 1},
        epochs=[{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "train_acc": 0.8, "val_acc": 0.75}],
        dataset="Demo shapes (source look)", label="a run from before the restart",
    ))
    return run_id


@pytest.fixture
def fresh_server(tmp_path_factory):
    """A server nobody has opened yet (the shared one has long served `/`), with one finished run."""
    data_dir = tmp_path_factory.mktemp("fresh-data")
    run_id = finished_run(data_dir)
    for url in serve(tmp_path_factory, data_dir):
        yield url, run_id


def test_a_run_link_opened_first_after_a_server_start_works(fresh_server, page):
    url, run_id = fresh_server
    page.goto(f"{url}/train?run={run_id}")  # the server's very first page request
    expect(page.get_by_role("heading", name=f"Run {run_id} — finished")).to_be_visible(timeout=90_000)
    expect(page.get_by_role("heading", name="Train").first).to_be_visible()
    nav = page.get_by_test_id("stSidebarNav")
    for name in PAGES:
        expect(nav.get_by_text(name, exact=True)).to_be_visible()
    # the raw files of pages/ (Streamlit's automatic multipage menu) never show
    expect(nav.get_by_text("_shared")).to_have_count(0)
    expect(nav.get_by_text("use model", exact=True)).to_have_count(0)
    assert_no_exception(page)
    go_to(page, "Model")  # and the session it started works on the other pages
    assert_no_exception(page)


def test_a_shared_run_link_opens_the_run_read_only_and_the_owner_keeps_their_runs(server, browser):
    owner_context = new_context(browser)
    stranger_context = new_context(browser)
    try:
        owner = owner_context.new_page()
        open_app(owner, server)
        go_to(owner, "Train")
        set_epochs(owner, 1)
        owner.get_by_role("button", name="Train", exact=True).click()
        wait_for_status(owner, "finished")
        your_runs = owner.get_by_role("heading", name="Your runs")
        expect(your_runs).to_be_visible(timeout=60_000)
        link = owner.url
        assert re.search(r"[?&]run=[0-9a-f]{16}", link) and "u=" not in link
        secret = {c["name"]: c["value"] for c in owner_context.cookies()}.get("transfer_lab_owner")
        assert secret and re.fullmatch(r"[0-9a-f]{16}", secret)

        owner.reload()  # a refresh keeps the person's runs: the secret is in this browser, not the link
        wait_for_status(owner, "finished", 60)
        expect(your_runs).to_be_visible(timeout=60_000)
        expect(owner.get_by_text("Opened from a shared link")).to_have_count(0)

        stranger = stranger_context.new_page()
        # the link as shared now, and as links looked when they carried the owner (?u=)
        for opened in (link, f"{link}&u={secret}"):
            stranger.goto(opened)
            wait_for_status(stranger, "finished", 60)
            expect(stranger.get_by_text("Opened from a shared link")).to_be_visible(timeout=60_000)
            expect(stranger.get_by_role("heading", name="Your runs")).to_have_count(0)
            expect(stranger).not_to_have_url(re.compile(r"[?&]u="))
            assert_no_exception(stranger)
        assert {c["name"]: c["value"] for c in stranger_context.cookies()}.get("transfer_lab_owner") != secret
    finally:
        owner_context.close()
        stranger_context.close()


def upload_weights(page, name: str, payload: bytes):
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
        files=[{"name": name, "mimeType": "application/octet-stream", "buffer": payload}])
    page.get_by_test_id("stFileChipName").filter(has_text=name).wait_for(timeout=60_000)
    page.get_by_test_id("stFileChipIconSpinner").wait_for(state="detached", timeout=60_000)
    page.get_by_role("button", name="Check and use this file").click()


def test_a_refused_weights_file_leaves_the_earlier_one_in_use_and_messages_use_the_persons_names(server, page):
    import io

    import torch

    from core import models

    buffer = io.BytesIO()
    torch.save(models.load(models.DEFAULT_BACKBONE, pretrained=False).model.state_dict(), buffer)
    open_app(page, server)
    go_to(page, "Model")
    page.get_by_text("Or start from your own weights file").click()
    upload_weights(page, "my-imagenet-copy.pt", buffer.getvalue())
    expect(page.get_by_text("my-imagenet-copy.pt fits efficientnet_lite0")).to_be_visible(timeout=90_000)
    expect(page.get_by_text("In use: my-imagenet-copy.pt")).to_be_visible()

    upload_weights(page, "half-downloaded.pt", buffer.getvalue()[:4096])
    expect(page.get_by_text("half-downloaded.pt is not a plain PyTorch state_dict")).to_be_visible(timeout=90_000)
    expect(page.get_by_text("Training still starts from your earlier file, my-imagenet-copy.pt")).to_be_visible()
    expect(page.get_by_text("In use: my-imagenet-copy.pt")).to_be_visible()
    expect(page.get_by_text("weights.pt", exact=False)).to_have_count(0)  # the server's old fixed name
    assert_no_exception(page)
