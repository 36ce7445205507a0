"""The `anthropic` SDK (about 40 MiB and one to two seconds to import) is imported only
where a routed deployment needs it, and then in a worker thread before any request, never
on the event loop by a request."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    """`code` in a fresh interpreter (this one has imported every SDK already); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_openai_only_inference_never_imports_the_anthropic_sdk():
    out = run(
        """
        import asyncio, sys
        import switchyard.inference.app
        from switchyard.common.routing import Deployment
        from switchyard.inference.upstream import create_upstream, map_sdk_error, preload_sdks
        import openai, httpx2

        deployment = Deployment(
            name="o", provider="openai", model="m", base_url="http://127.0.0.1:9/v1",
            api_key_env="PATH",
        )

        async def main():
            await preload_sdks([deployment])
            upstream = create_upstream(deployment)
            # An SDK error still maps to the deployment's error.
            request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
            error = map_sdk_error(openai.APITimeoutError(request), deployment, "openai")
            print(error.code)
            await upstream.aclose()

        asyncio.run(main())
        print("anthropic" in sys.modules)
        """
    )
    assert out.splitlines() == ["upstream_timeout", "False"]


def test_a_routed_anthropic_deployment_gets_its_sdk_in_a_worker_thread_before_requests():
    out = run(
        """
        import asyncio, builtins, sys, threading
        from switchyard.common.routing import Deployment
        from switchyard.inference.upstream import create_upstream, map_sdk_error, preload_sdks

        threads = []
        real_import = builtins.__import__

        def recording_import(name, *args, **kwargs):
            if name == "anthropic" and "anthropic" not in sys.modules:
                threads.append(threading.current_thread() is threading.main_thread())
            return real_import(name, *args, **kwargs)

        builtins.__import__ = recording_import
        deployment = Deployment(
            name="a", provider="anthropic", model="m", base_url="http://127.0.0.1:9",
            api_key_env="PATH",
        )

        async def main():
            assert "anthropic" not in sys.modules
            await preload_sdks([deployment])
            upstream = create_upstream(deployment)
            import anthropic, httpx2
            request = httpx2.Request("POST", "http://127.0.0.1:9/v1/messages")
            print(map_sdk_error(anthropic.APIConnectionError(request=request), deployment,
                                "anthropic").code)
            await upstream.aclose()

        asyncio.run(main())
        # Imported once, on a worker thread (False: not the main thread, the loop's).
        print(threads)
        """
    )
    assert out.splitlines() == ["upstream_unreachable", "[False]"]


def test_the_clients_tls_context_is_built_in_a_worker_thread_before_requests():
    out = run(
        """
        import asyncio, threading
        import httpcore2
        from switchyard.common.routing import Deployment
        from switchyard.inference.upstream import create_upstream, preload_sdks

        on_main_thread = []
        default_ssl_context = httpcore2.default_ssl_context

        def recording(*args, **kwargs):
            on_main_thread.append(threading.current_thread() is threading.main_thread())
            return default_ssl_context(*args, **kwargs)

        httpcore2.default_ssl_context = recording
        deployment = Deployment(
            name="o", provider="openai", model="m", base_url="https://127.0.0.1:9/v1",
            api_key_env="PATH",
        )

        async def main():
            await preload_sdks([deployment])
            upstreams = [create_upstream(deployment) for _ in range(3)]
            for upstream in upstreams:
                await upstream.aclose()

        asyncio.run(main())
        # Built once, on a worker thread (False: not the main thread, the loop's).
        print(on_main_thread)
        """
    )
    assert out.splitlines() == ["[False]"]
