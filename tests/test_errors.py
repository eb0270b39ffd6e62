"""Typed exceptions: one class or family per SDK code and reason, attributes, pickling."""

from __future__ import annotations

import pickle

import openai
import pytest
from openai.types.responses import Response

import bgwatch
from bgwatch._watcher import known_error_codes, known_incomplete_reasons
from bgwatch.errors import exception_class_for, exception_for

from .conftest import response_body


@pytest.mark.parametrize("code", known_error_codes())
def test_every_sdk_error_code_has_a_specific_class(code: str) -> None:
    # Read from the installed SDK with typing.get_args: a code added by a new SDK release
    # shows up here and fails until it has a class or family.
    cls = exception_class_for("failed", code)
    assert issubclass(cls, bgwatch.ResponseFailed)
    assert cls not in (bgwatch.ResponseFailed, bgwatch.UnrecognizedFailure)


@pytest.mark.parametrize("reason", known_incomplete_reasons())
def test_every_sdk_incomplete_reason_has_a_specific_class(reason: str) -> None:
    cls = exception_class_for("incomplete", reason)
    assert issubclass(cls, bgwatch.ResponseIncomplete)
    assert cls not in (bgwatch.ResponseIncomplete, bgwatch.UnrecognizedIncomplete)


def test_families_and_fallbacks() -> None:
    assert exception_class_for("failed", "image_parse_error") is bgwatch.ImageError
    assert exception_class_for("failed", "image_new_future_code") is bgwatch.ImageError
    assert exception_class_for("failed", "bio_policy") is bgwatch.BioPolicy
    assert issubclass(bgwatch.BioPolicy, bgwatch.PolicyViolation)
    assert exception_class_for("failed", "some_brand_new_code") is bgwatch.UnrecognizedFailure
    assert exception_class_for("failed", None) is bgwatch.UnrecognizedFailure
    assert exception_class_for("incomplete", "new_reason") is bgwatch.UnrecognizedIncomplete
    assert exception_class_for("cancelled") is bgwatch.ResponseCancelled
    for status in ("completed", "queued", "in_progress", "bogus"):
        with pytest.raises(ValueError):
            exception_class_for(status)


def test_retryable_means_a_new_create_may_succeed() -> None:
    retryable = {code for code in known_error_codes() if exception_for("failed", code=code).retryable}
    assert retryable == {"server_error", "rate_limit_exceeded", "vector_store_timeout"}
    assert not any(exception_for("incomplete", reason=r).retryable for r in known_incomplete_reasons())
    assert not exception_for("cancelled").retryable


def all_exceptions() -> list[bgwatch.BackgroundResponseError]:
    found: list[bgwatch.BackgroundResponseError] = []
    for code in (*known_error_codes(), "unheard_of", None):
        found.append(exception_for("failed", code=code, message="m", response_id="resp_1", request_id="req_1"))
    for reason in (*known_incomplete_reasons(), None):
        found.append(exception_for("incomplete", reason=reason, response_id="resp_2"))
    found.append(exception_for("cancelled", response_id="resp_3", body={"id": "resp_3", "status": "cancelled"}))
    return found


@pytest.mark.parametrize("exc", all_exceptions(), ids=lambda e: f"{type(e).__name__}-{e.code or e.reason}")
def test_exceptions_pickle_and_describe_themselves(exc: bgwatch.BackgroundResponseError) -> None:
    assert isinstance(exc, openai.OpenAIError)
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is type(exc)
    for attribute in (
        "code",
        "reason",
        "message",
        "response_id",
        "request_id",
        "status",
        "retryable",
        "body",
    ):
        assert getattr(clone, attribute) == getattr(exc, attribute), attribute
    text = str(exc)
    assert type(exc).__name__ in text and str(exc.response_id) in text
    assert (exc.code or exc.reason or exc.status) in text


def test_raise_for_status_with_a_response_object_and_a_dict() -> None:
    body = response_body("resp_r", "failed", code="rate_limit_exceeded", message="slow")
    model = Response.model_validate(body)
    for value in (model, body):
        with pytest.raises(bgwatch.RateLimitExceeded) as caught:
            bgwatch.raise_for_status(value)
        assert caught.value.response_id == "resp_r" and caught.value.message == "slow"
        assert caught.value.body is not None and caught.value.body["status"] == "failed"
    done = Response.model_validate(response_body("resp_ok", "completed"))
    assert bgwatch.raise_for_status(done) is done
    incomplete = response_body("resp_i", "incomplete", reason="content_filter")
    assert bgwatch.raise_for_status(incomplete, raise_on=("failed",)) is incomplete
    with pytest.raises(bgwatch.ResponseContentFiltered):
        bgwatch.raise_for_status(incomplete)
    with pytest.raises(TypeError):
        bgwatch.raise_for_status(42)
    with pytest.raises(bgwatch.ConfigurationError):
        bgwatch.raise_for_status(body, raise_on="failed")
