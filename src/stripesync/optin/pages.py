"""The public pages the opt-in email links to.

GET shows the choice and never changes anything (mail scanners and link previewers follow
links); only the buttons' POSTs record an answer. Unknown tokens get a friendly 404 page,
expired ones a 410 page. The pages are self-contained: a strict Content-Security-Policy
allows no outside resource, and no referrer carries the token anywhere.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from stripesync.db import DbSession
from stripesync.models import OptinResponse
from stripesync.optin import service
from stripesync.optin.rendering import render_page
from stripesync.optin.service import TokenProblem

router = APIRouter(prefix="/optin", tags=["optin pages"])

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
}

_OUTCOMES = {
    "confirmed": ("Thank you!", "You're on the list. {merchant} will keep you updated by email."),
    "already_confirmed": ("You're already on the list", "You said yes earlier. Thank you!"),
    "declined": (
        "No problem",
        "You said no thanks. {merchant} will not add you to its mailing list or email you again.",
    ),
    "already_declined": (
        "You said no thanks",
        "We recorded that earlier. You will not get marketing emails from {merchant}.",
    ),
    "closed": (
        "Nothing to do",
        "You asked not to get emails from {merchant} before, so we changed nothing.",
    ),
}


def _page(html: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _problem_page(status: int) -> HTMLResponse:
    if status == 410:
        heading = "This link has expired"
        lines = [
            "Links in this email work for 30 days. Nothing was changed.",
            "If you'd like to hear from the shop, sign up on their website.",
        ]
    else:
        heading = "We couldn't find this link"
        lines = ["It may be mistyped or no longer valid. Nothing was changed."]
    return _page(render_page(title=heading, heading=heading, lines=lines), status)


def _outcome_page(
    outcome: str, merchant: str, postal_address: str | None, preview: bool = False
) -> HTMLResponse:
    heading, line = _OUTCOMES[outcome]
    return _page(
        render_page(
            title=heading,
            heading=heading,
            lines=[line.format(merchant=merchant)],
            merchant_name=merchant,
            postal_address=postal_address,
            preview=preview,
        )
    )


def _choice_page(
    merchant: str, postal_address: str | None, base: str, preview: bool = False
) -> HTMLResponse:
    return _page(
        render_page(
            title=f"Emails from {merchant}",
            heading=f"Would you like emails from {merchant}?",
            lines=[f"{merchant} would like to send you news and offers by email now and then."],
            merchant_name=merchant,
            postal_address=postal_address,
            confirm_action=f"{base}/confirm",
            decline_action=f"{base}/decline",
            preview=preview,
        )
    )


# The preview routes come first: "preview" is never a token (tokens are 43 characters).
@router.get("/preview", response_class=HTMLResponse)
async def preview_page() -> HTMLResponse:
    """What a customer sees after clicking a link in the preview email. Changes nothing."""
    return _choice_page("Your shop", None, "/optin/preview", preview=True)


@router.post("/preview/confirm", response_class=HTMLResponse)
async def preview_confirm() -> HTMLResponse:
    return _outcome_page("confirmed", "Your shop", None, preview=True)


@router.post("/preview/decline", response_class=HTMLResponse)
async def preview_decline() -> HTMLResponse:
    return _outcome_page("declined", "Your shop", None, preview=True)


@router.get("/{token}", response_class=HTMLResponse, responses={404: {}, 410: {}})
async def choice_page(session: DbSession, token: str) -> HTMLResponse:
    """The merchant's name and two buttons. A GET never records anything."""
    try:
        recipient = await service.resolve_token(session, token)
    except TokenProblem as problem:
        return _problem_page(problem.status)
    row, version = recipient.optin_email, recipient.version
    if row.response is not None:
        return _outcome_page(
            f"already_{row.response}", version.merchant_name, version.postal_address
        )
    return _choice_page(version.merchant_name, version.postal_address, f"/optin/{token}")


# Some mail clients open the List-Unsubscribe URL with a GET: show the choice, change nothing.
@router.get("/{token}/decline", response_class=HTMLResponse, include_in_schema=False)
async def decline_link(session: DbSession, token: str) -> HTMLResponse:
    return await choice_page(session, token)


async def _answer(
    request: Request, session: DbSession, token: str, response: OptinResponse
) -> HTMLResponse:
    try:
        result = await service.answer(
            session,
            token,
            response,
            client_ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
        )
    except TokenProblem as problem:
        return _problem_page(problem.status)
    return _outcome_page(result.outcome, result.merchant_name, result.postal_address)


@router.post("/{token}/confirm", response_class=HTMLResponse, responses={404: {}, 410: {}})
async def confirm(request: Request, session: DbSession, token: str) -> HTMLResponse:
    """Records consent (time, IP, user agent, the email version) and says thank you."""
    return await _answer(request, session, token, OptinResponse.CONFIRMED)


@router.post("/{token}/decline", response_class=HTMLResponse, responses={404: {}, 410: {}})
async def decline(request: Request, session: DbSession, token: str) -> HTMLResponse:
    """Records the refusal: that person is never emailed or imported. Also the target of
    one-click List-Unsubscribe (RFC 8058)."""
    return await _answer(request, session, token, OptinResponse.DECLINED)
