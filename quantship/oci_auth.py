"""Registry authentication for `quantship.oci`'s push and pull: who quantship is to a registry
(`Credentials`, from arguments or a Docker config file: a dockerconfigjson pull secret mounted in
a pod), what the registry asks for (`probe`, `challenge_of`) and what answers it: basic
credentials, or a bearer token from its realm (`Bearer`), sent by a push's transport adapters
(`CredentialsOnlyTo`, `BearerTo`) to the one origin each is for.

Authentication follows the registry's challenge (`WWW-Authenticate`), first asked of /v2/ without
credentials, then of any 401 a GET meets:
- `Basic`: the credentials go, as HTTP basic auth, to the registry's own host only.
- `Bearer realm=...,service=...` (the distribution token spec: Docker Hub, GHCR, Harbor, Quay,
  GitLab, ACR): a token is asked of the realm for `repository:REPO:pull` (a push:
  `pull,push`), anonymously or with the credentials as basic auth, and sent to the registry as
  `Authorization: Bearer`. The credentials go to that realm only, never to the registry itself,
  and only over https unless the registry is itself plain HTTP (loopback or `insecure`); the
  realm's answer is read within `MAX_TOKEN_BYTES`, and a redirect from it is refused; the realm
  is the first challenge's for the whole push or pull, and a later challenge naming a realm on
  another origin is refused, unasked. A Docker config's `identitytoken` (ACR's `docker login`
  writes one) is sent there in the password's stead, POSTed as the OAuth2 refresh-token grant of
  the token spec, under the same rules. A push
  asks for its token before oras starts (oras would ask for the first request's pull scope and
  use that token for the upload) and sends basic credentials nowhere but that realm. A token is
  renewed, for the same scope, once its `expires_in` has passed, and when the registry answers
  401 to it (it expired by the registry's clock): the request goes once more with the fresh
  token, and a second 401 is final. A push's renewal lives in its session's transport adapter,
  as oras resends the token it holds, unrenewed.
- any other scheme is refused with its name.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import oras.auth
import requests
import urllib3.util.retry

from quantship.oci_reference import DOCKER_HUB_API, OciError, Reference
from quantship.oci_transport import OwnRedirects, Timeouts, capped, push_retries
from quantship.printable import brief
from quantship.transfer_speed import SpeedLimit

S = TypeVar("S", bound=requests.Session)

CONNECT_TIMEOUT_S = 5.0
"""A registry that does not take the connection to /v2/ within this is down: named at once. Its
answer may take the whole `timeout`."""
MAX_TOKEN_BYTES = 2**20
"""The largest answer read from a token realm: 1 MiB. A token is a JWT of a few KB; a realm that
streams more is refused, not held in memory."""
MIN_TOKEN_LIFETIME_S = 60
"""Seconds a bearer token is taken to live when its realm says less or nothing: the token spec's
default for `expires_in`, and the floor Docker's client puts on it. The registry's own refusal
renews a token that dies sooner."""
CLIENT_ID = "quantship"
"""Who asks, in an identity token's exchange (the OAuth2 `client_id` the token spec requires)."""
PULL, PUSH = "pull", "pull,push"
"""The actions a token is asked for (the `scope` repository:REPO:ACTIONS of the token spec)."""
DOCKER_HUB_LOGINS = ("index.docker.io", DOCKER_HUB_API, "docker.io")
"""The hosts of a Docker config's keys that hold a Docker Hub login, first found first taken:
`docker login` writes `https://index.docker.io/v1/`."""


@dataclass(frozen=True)
class Login:
    """What quantship holds for a registry: a user and password, and maybe an identity token
    from a Docker config (an OAuth2 refresh token: `docker login` to ACR writes one, beside the
    user 00000000-0000-0000-0000-000000000000 and an empty password). A token realm is sent the
    identity token instead of the password."""

    user: str
    password: str
    identity_token: str | None = None

    @property
    def basic(self) -> tuple[str, str]:
        """As HTTP basic auth."""
        return self.user, self.password

    @property
    def named(self) -> str:
        """What a refusal refused."""
        if self.identity_token is not None:
            return "the Docker config's identity token"
        return f"the credentials of {self.user!r}"


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    docker_config: Path | None = None
    """A Docker config.json (the content of a dockerconfigjson Secret)."""


def login_for(reference: Reference, credentials: Credentials | None) -> Login | None:
    """The user and password from the arguments, else the Docker config's entry for the registry
    (with its identity token, if it has one)."""
    if credentials is None:
        return None
    if credentials.username is not None and credentials.password is not None:
        return Login(credentials.username, credentials.password)
    if credentials.docker_config is None:
        return None
    try:
        auths = json.loads(credentials.docker_config.read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise OciError(f"cannot read the Docker config {credentials.docker_config}: {exc}") from exc
    entry = _auth_for(auths, reference.registry)
    identity = entry.get("identitytoken") or None
    if identity is not None and not (isinstance(identity, str) and re.fullmatch(r"[\x21-\x7e]+", identity)):
        raise OciError(f"the Docker config's identitytoken for {reference.registry} is not a token")
    if "username" in entry and "password" in entry:
        return Login(str(entry["username"]), str(entry["password"]), identity)
    if "auth" in entry:
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise OciError(
                f"the Docker config's auth for {reference.registry} is not base64 user:password"
            ) from exc
        return Login(user, password, identity)
    return Login("", "", identity) if identity is not None else None


def _auth_for(auths: Any, registry: str) -> dict[str, Any]:
    """The Docker config's entry for `registry`: keyed by its host as someone wrote it, with or
    without a scheme and a path (`https://Registry.Example.com/v1/`); a host has no case. Docker
    Hub's is under any of DOCKER_HUB_LOGINS."""
    if not isinstance(auths, dict):
        return {}
    by_host: dict[str, dict[str, Any]] = {}
    for key, entry in auths.items():
        written = str(key) if "://" in str(key) else f"//{key}"
        if isinstance(entry, dict):
            by_host.setdefault(urllib.parse.urlsplit(written).netloc.lower(), entry)
    hosts = DOCKER_HUB_LOGINS if registry == DOCKER_HUB_API else (registry,)
    return next((by_host[host] for host in hosts if host in by_host), {})


@dataclass(frozen=True)
class Challenge:
    """What a registry asks for in WWW-Authenticate (RFC 9110 11.6.1)."""

    scheme: str
    """Lower-case: basic, bearer, or one quantship does not speak."""
    params: Mapping[str, str]


_AUTH_ITEM = re.compile(r'([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?')


def challenge_of(response: requests.Response) -> Challenge:
    """The answer's challenge, Bearer preferred when it offers several. A 401 that names none is
    taken as asking for basic credentials, as registries behind a plain proxy do."""
    challenges: list[tuple[str, dict[str, str]]] = []
    for match in _AUTH_ITEM.finditer(response.headers.get("WWW-Authenticate", "")):
        name, value = match.groups()
        if value is None:  # a bare token starts the next challenge
            challenges.append((name.lower(), {}))
        elif challenges:
            unquoted = re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value
            challenges[-1][1][name.lower()] = unquoted
    bearer = [challenge for challenge in challenges if challenge[0] == "bearer"]
    return Challenge(*(bearer or challenges or [("basic", {})])[0])


def check_supported(challenge: Challenge, reference: Reference) -> None:
    if challenge.scheme not in ("basic", "bearer"):
        raise OciError(
            f"{reference.registry} asks for {challenge.scheme!r} authentication: quantship speaks "
            "basic auth and bearer tokens (the distribution token spec) only"
        )


def probe(
    reference: Reference,
    login: Login | None,
    plain_http: bool,
    timeout: float,
    speed_limit: SpeedLimit,
    retries: urllib3.util.retry.Retry | int = 0,
) -> Challenge | None:
    """A quick look at /v2/ (its body unread), first without credentials, made again as `retries`
    says (`push_retries`, for a pull too): a registry that is down, or answers a failure other than 401 or
    403 (a rate limit, a gateway's 503), is named. Returns what it asks for: nothing (None), basic
    auth (the credentials checked here, sent to it alone), or a bearer token (nothing is sent to
    it: the credentials are the realm's)."""
    url = f"{'http' if plain_http else 'https'}://{reference.registry}/v2/"
    answer = _look(reference, url, None, timeout, speed_limit, retries)
    if answer.status_code < 400:  # a redirect too: it is followed nowhere, and was taken as open
        return None
    if answer.status_code not in (401, 403):
        raise OciError(
            f"{reference.registry}: HTTP {answer.status_code} {brief(answer.reason or '', 60)} (GET /v2/)"
        )
    asked = challenge_of(answer)
    check_supported(asked, reference)
    if asked.scheme == "bearer":
        return asked
    if login is None:
        raise OciError(needs_credentials(reference))
    if _look(reference, url, login.basic, timeout, speed_limit, retries).status_code in (401, 403):
        raise OciError(f"{reference.registry} refused {login.named}")
    return asked


def _look(
    reference: Reference,
    url: str,
    login: tuple[str, str] | None,
    timeout: float,
    speed_limit: SpeedLimit,
    retries: urllib3.util.retry.Retry | int,
) -> requests.Response:
    """The status and headers of GET `url` (held to `speed_limit`), its body unread, made again as
    `retries` says."""
    try:
        with OwnRedirects() as session:
            session.mount(url, Timeouts(timeout, speed_limit, retries))
            # a registry that does not take the connection is down; one that is slow to answer is not
            answer = session.get(
                url, auth=login, timeout=(min(CONNECT_TIMEOUT_S, timeout), timeout), stream=True
            )
            answer.close()
    except requests.RequestException as exc:
        # a registry that speaks plain HTTP fails the TLS handshake
        hint = " (plain HTTP? --insecure)" if isinstance(exc, requests.exceptions.SSLError) else ""
        raise OciError(f"cannot reach the registry {reference.registry}: {_why(exc)}{hint}") from exc
    return answer


def _why(exc: requests.RequestException) -> str:
    """What the system said (Connection refused, Name or service not known), found down the chain of
    causes requests and urllib3 wrap it in; else the exception's name (ConnectTimeout, SSLError)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{type(exc).__name__} ({cause.strerror})"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


GIVE_CREDENTIALS = (
    "--docker-config (a Docker config.json holding them), or to push and pull, --username with "
    "QUANTSHIP_REGISTRY_PASSWORD"
)
"""How a refusal for want of credentials says to give them: every command that reaches a registry
takes a Docker config; fetch and quantize-job (the operator's, given a pull secret's) take no
--username."""


def needs_credentials(reference: Reference) -> str:
    return f"{reference.registry} needs credentials: {GIVE_CREDENTIALS}"


def _realm(challenge: Challenge, reference: Reference, plain_http: bool) -> str:
    """The token realm the registry named, if credentials may go there: https, or http when the
    registry itself is plain HTTP."""
    realm = challenge.params.get("realm", "")
    schemes = ("https", "http") if plain_http else ("https",)
    try:
        parts = urllib.parse.urlsplit(realm)
        named = parts.scheme in schemes and bool(parts.hostname)
        if parts.hostname:
            parts.hostname.encode("idna")  # an empty or 64-character label: no host to connect to
    except ValueError:  # "Invalid IPv6 URL" (a '[' it cannot read), or the label (UnicodeError)
        named = False
    if not named:
        raise OciError(
            f"{reference.registry} names the token realm {brief(repr(realm))}: refused, quantship asks "
            f"a realm for tokens over {' or '.join(schemes)} only"
        )
    return realm


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Bearer:
    """The bearer token of one push or pull: for its actions on its repository, from the realm the
    registry's challenge names. Renewed before a request once its `expires_in` has passed, and
    whenever the registry refuses it (the registry's clock decides; Docker Hub's tokens live
    300 s): a push or pull may outlive any one token."""

    challenge: Challenge
    reference: Reference
    actions: str
    login: Login | None
    plain_http: bool
    timeout: float
    speed_limit: SpeedLimit
    clock: Callable[[], float] = time.monotonic
    token: str = ""
    expires: float = float("-inf")
    """When (on `clock`) the token's lifetime ends, counted from when it was asked for."""

    def current(self) -> str:
        """The token, renewed first if its lifetime has passed."""
        return self.token if self.clock() < self.expires else self.renew()

    def renew(self, challenge: Challenge | None = None) -> str:
        """A fresh token, asked of the realm `challenge` names (else the last one's); its scope
        stays this operation's, whatever the challenge asks (a HEAD's challenge asks for pull
        only, and that token would not do for the upload after it). The realm stays on the
        first challenge's origin: a challenge naming another is refused, unasked."""
        if challenge is not None:
            self._same_realm(challenge)
            self.challenge = challenge
        asked = self.clock()
        with Timeouts.on(OwnRedirects(), self.timeout, self.speed_limit) as session:
            self.token, lifetime = _token(
                self.challenge, self.reference, self.actions, self.login, self.plain_http, session
            )
        self.expires = asked + lifetime
        return self.token

    def _same_realm(self, challenge: Challenge) -> None:
        """Refuse a challenge whose realm is on another origin (scheme, host, port) than the first
        one's: the credentials went to that realm, and a registry (or whoever answers in its
        name) does not get to send them elsewhere half-way."""
        pinned = _origin(_realm(self.challenge, self.reference, self.plain_http))
        named = _origin(_realm(challenge, self.reference, self.plain_http))
        if named != pinned:
            raise OciError(
                f"{self.reference.registry} named the token realm {brief(pinned)}, then "
                f"{brief(named)}: refused, a push or pull asks one realm for its tokens"
            )


def _token(
    challenge: Challenge,
    reference: Reference,
    actions: str,
    login: Login | None,
    plain_http: bool,
    session: requests.Session,
) -> tuple[str, float]:
    """A bearer token for `actions` on the reference's repository, and the seconds it lives,
    asked of the realm the registry's challenge names: with an identity token (the OAuth2
    refresh-token grant, POSTed), the credentials (basic auth), both to that realm alone, or
    anonymously. The realm's answer is read within MAX_TOKEN_BYTES; a redirect is refused."""
    realm = _realm(challenge, reference, plain_http)
    host = brief(urllib.parse.urlsplit(realm).netloc)  # the registry's words: printable, bounded
    params = {"scope": f"repository:{reference.repository}:{actions}"}
    if "service" in challenge.params:
        params["service"] = challenge.params["service"]
    too_long = f"the token realm {host} answered more than {MAX_TOKEN_BYTES} bytes: refused"
    try:
        with _ask_realm(session, realm, params, login) as answer:
            _check_token_answer(answer, host, reference, login)
            body = b"".join(capped(answer, MAX_TOKEN_BYTES, too_long))
    except requests.RequestException as exc:
        raise OciError(
            f"cannot reach the token realm {host} of {reference.registry}: {type(exc).__name__}"
        ) from exc
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    # the spec names it `token`; OAuth2 realms (ACR) say `access_token`
    token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
    if not isinstance(token, str) or not re.fullmatch(r"[\x21-\x7e]+", token):
        raise OciError(f"the token realm {host} of {reference.registry} answered no token")
    return token, _lifetime(data)


def _ask_realm(
    session: requests.Session, realm: str, params: dict[str, str], login: Login | None
) -> requests.Response:
    """The realm's streamed answer to a token request: the OAuth2 refresh-token grant when
    `login` holds an identity token (https://distribution.github.io/distribution/spec/auth/oauth/),
    else the token spec's GET, with the credentials as basic auth when there are any."""
    if login is not None and login.identity_token is not None:
        form = {
            **params,
            "grant_type": "refresh_token",
            "refresh_token": login.identity_token,
            "client_id": CLIENT_ID,
        }
        return session.post(realm, data=form, stream=True)
    return session.get(realm, params=params, auth=login.basic if login else None, stream=True)


def _lifetime(answer: dict[str, Any]) -> float:
    """The seconds a token lives, from the realm's `expires_in`: MIN_TOKEN_LIFETIME_S at least.
    Its `issued_at` is not read: it is on the realm's clock, which may be minutes off ours."""
    expires_in = answer.get("expires_in")
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
        return MIN_TOKEN_LIFETIME_S
    return max(float(expires_in), MIN_TOKEN_LIFETIME_S)


def _check_token_answer(
    answer: requests.Response, host: str, reference: Reference, login: Login | None
) -> None:
    """Refuse a token realm's answer that is not a token, naming why."""
    status = answer.status_code
    if answer.is_redirect:  # the credentials go to the realm the registry named, nowhere else
        raise OciError(
            f"the token realm {host} of {reference.registry} redirected the token request: refused"
        )
    if status in (401, 403) and login is not None:
        raise OciError(f"the token realm {host} of {reference.registry} refused {login.named}")
    if status in (401, 403):
        raise OciError(f"{needs_credentials(reference)} (its token realm {host} gives no anonymous token)")
    if status != 200:
        raise OciError(
            f"the token realm {host} of {reference.registry} answered {status} {brief(answer.reason or '')}"
        )


class Withheld(oras.auth.AuthenticationException):
    """Basic credentials about to go to an origin they are not for. An AuthenticationException,
    which no oras code catches or retries."""


class Refused(oras.auth.AuthenticationException):
    """The registry refused a token just renewed, or a token could not be had, or the credentials:
    an AuthenticationException, which no oras code catches or retries."""


class CredentialsOnlyTo(Timeouts):
    """Timeouts, and basic credentials sent to one origin (scheme://host) only: oras sends them to
    any realm a 401 names and any upload location a registry gives."""

    def __init__(self, timeout: float, speed_limit: SpeedLimit, origin: str) -> None:
        super().__init__(timeout, speed_limit, push_retries())
        self.origin = origin

    @classmethod
    def guard(cls, session: S, timeout: float, speed_limit: SpeedLimit, origin: str) -> S:
        """`session`, every request of it now timing out, held to `speed_limit` and sending basic
        credentials to `origin` only."""
        for scheme in ("http://", "https://"):
            session.mount(scheme, cls(timeout, speed_limit, origin))
        return session

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        basic = str(request.headers.get("Authorization", "")).lower().startswith("basic ")
        if basic and _origin(request.url or "") != self.origin:
            raise Withheld(f"credentials for {self.origin} withheld from {_origin(request.url or '')}")
        return super().send(request, **kwargs)


class BearerTo(Timeouts):
    """Timeouts, and a bearer token sent to the registry's origin and no other Authorization
    anywhere (the credentials stay with `Bearer`, for the realm). A 401 of the registry's renews
    the token and sends the request once more (its body is bytes: oras reads every file whole);
    a second 401 is final."""

    def __init__(self, timeout: float, speed_limit: SpeedLimit, registry: str, bearer: Bearer) -> None:
        super().__init__(timeout, speed_limit, push_retries())
        self.registry = registry
        self.bearer = bearer

    @classmethod
    def carrying(
        cls, session: S, timeout: float, speed_limit: SpeedLimit, registry: str, bearer: Bearer
    ) -> S:
        """`session`, its requests timing out, held to `speed_limit`, and `bearer`'s token going
        to `registry` (scheme://host) only."""
        for scheme in ("http://", "https://"):
            session.mount(scheme, cls(timeout, speed_limit, registry, bearer))
        return session

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if _origin(request.url or "") != self.registry:
            request.headers.pop("Authorization", None)  # the token is the registry's alone
            return super().send(request, **kwargs)
        request.headers["Authorization"] = f"Bearer {self._token(self.bearer.current)}"
        response = super().send(request, **kwargs)
        if response.status_code != 401:
            return response
        response.close()
        asked = challenge_of(response)
        if asked.scheme != "bearer":
            raise Refused(f"the registry refused its token and asks for {asked.scheme!r} authentication")
        if not isinstance(request.body, bytes | str | None):
            raise Refused("the registry refused its token in the middle of an upload it cannot resend")
        request.headers["Authorization"] = f"Bearer {self._token(lambda: self.bearer.renew(asked))}"
        response = super().send(request, **kwargs)
        if response.status_code == 401:
            response.close()
            raise Refused("the registry refused the token its realm had just renewed (401)")
        return response

    @staticmethod
    def _token(asking: Callable[[], str]) -> str:
        """What `asking` returns; a realm's refusal as one oras lets through at once."""
        try:
            return asking()
        except OciError as exc:
            raise Refused(str(exc)) from exc
