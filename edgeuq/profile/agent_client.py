"""The host side of the board's timing agent (``python -m edgeuq_runtime agent``).

``edgeuq profile --agent HOST:PORT`` sends the bundle (the runtime's deterministic tar) and its
digest; the agent verifies it, times every stage with the runtime's own harness on the board
and returns the figures, which become a ``LatencyReport`` labelled ``agent`` ("remote (timing
agent)"): unlike TVM RPC it times ONNX Runtime graphs and the numpy stages too.
Placement (:class:`edgeuq.lower.placement_agent.AgentMeasurer`) and the search's latency
objective (``edgeuq search --agent``) time bundles on the board through :func:`agent_profile`.

The token comes from ``$EDGEUQ_AGENT_TOKEN`` or a token file (``--agent-token-file``).
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["AgentError", "agent_health", "agent_profile", "packed_bundle", "read_agent_token"]


class AgentError(ValueError):
    """The agent refused a request (its reason) or could not be reached (a ValueError, so the
    CLI reports it in one line like any other bad argument). ``status``: the agent's HTTP status
    when it answered, None when it did not; ``cause``: the underlying error then."""

    status: Optional[int] = None
    cause: Optional[BaseException] = None


def read_agent_token(token_file: Optional[Path] = None) -> str:
    env = os.environ.get("EDGEUQ_AGENT_TOKEN")
    if token_file is not None:
        text = Path(token_file).read_text().strip()
    elif env is not None:
        text = env.strip()
    else:
        raise ValueError("--agent needs the agent's token: set $EDGEUQ_AGENT_TOKEN or give --agent-token-file")
    if len(text) < 16:
        raise ValueError("the agent token is under 16 characters")
    return text


def _error(message: str, status: Optional[int] = None, cause: Optional[BaseException] = None) -> AgentError:
    err = AgentError(message)
    err.status, err.cause = status, cause
    return err


def _call(req: Any, host: str, port: int, timeout_s: float) -> Dict[str, Any]:
    import http.client

    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read().decode()).get("error", "")
        except ValueError:
            reason = ""
        raise _error(f"agent {host}:{port} refused the request ({exc.code}): {reason or exc.reason}",
                     exc.code) from None
    except urllib.error.URLError as exc:
        raise _error(f"cannot reach the agent at {host}:{port}: {exc}", None, exc.reason
                     if isinstance(exc.reason, BaseException) else exc) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:  # reset mid-answer, not HTTP, not JSON
        raise _error(f"the agent at {host}:{port} broke off its answer: {type(exc).__name__}: {exc}", None,
                     exc) from None


def agent_health(agent: str, *, token: str, timeout_s: float = 30.0) -> Dict[str, Any]:
    """The agent's ``/v1/health`` report: ``machine``, ``hostname`` and ``cpu_flags`` (the board's
    CPU feature flags, or None where the agent could not read them or is older than that field)."""
    from .tvm_rpc import parse_address

    host, port = parse_address(agent, "--agent")
    req = urllib.request.Request(f"http://{host}:{port}/v1/health", method="GET",
                                 headers={"Authorization": f"Bearer {token}"})
    return _call(req, host, port, timeout_s)


def packed_bundle(bundle: Any) -> Tuple[bytes, str]:
    """The bundle verified and packed as the agent takes it: ``(tar bytes, digest)``."""
    from edgeuq_runtime.bundle import load_bundle
    from edgeuq_runtime.ota.archive import pack_bundle

    b = load_bundle(bundle, verify=True)
    return pack_bundle(Path(bundle)), str(b.digest)


def agent_profile(agent: str, bundle: Any, *, token: str, samples: Sequence[int] = (1, 8, 32), warmup: int = 5,
                  repeats: int = 50, seed: int = 0, timeout_s: float = 600.0, raw: bool = False,
                  packed: Optional[Tuple[bytes, str]] = None, match_key: Optional[str] = None) -> Dict[str, Any]:
    """POST the bundle to the agent at ``agent`` (``HOST:PORT``) and return its JSON report.
    ``packed``: :func:`packed_bundle`'s result, when already made; ``match_key``: the matchkey a
    tracker handed out for this agent (an agent in a tracker's pool serves only those)."""
    from edgeuq_runtime.agent import MATCH_HEADER

    from .tvm_rpc import parse_address

    host, port = parse_address(agent, "--agent")
    body, digest = packed if packed is not None else packed_bundle(bundle)
    query = (f"samples={','.join(str(int(s)) for s in samples)}&warmup={int(warmup)}&repeats={int(repeats)}"
             f"&seed={int(seed)}&digest={digest}" + ("&raw=1" if raw else ""))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-tar"}
    if match_key is not None:
        headers[MATCH_HEADER] = match_key
    req = urllib.request.Request(f"http://{host}:{port}/v1/profile?{query}", data=body, method="POST",
                                 headers=headers)
    doc = _call(req, host, port, timeout_s)
    if doc.get("bundle_digest") != digest:
        raise AgentError(f"agent {host}:{port} timed bundle {doc.get('bundle_digest')!r}, not {digest}")
    return doc
