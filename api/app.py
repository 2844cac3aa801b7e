"""create_app(settings): the Litestar application with its lifespan and the one error table."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from api.admin import SecurityController, TokenController
from api.audit import AuditController
from api.auth import AuthMiddleware
from api.backup import BackupController, RevertController, close_time_travel
from api.config import ConfigController, OverridesController, WhitelistController
from api.errors import handle
from api.events import EventsController
from api.keys import DkimController, DnsController, TlsController
from api.quarantine import QuarantineController
from api.reconcile import QueueController, ReconcileController
from api.resources import AliasController, DomainController, MailboxController
from api.runtime import Runtime
from api.system import AuthController, SystemController, version
from api.ui import ui_router
from core.settings import Settings


def _openapi() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="mailpanel",
        version=version(),
        description=(
            "Mail-server control plane. Every change is an event in NATS JetStream. Errors are "
            'always {"error","detail","code"}.'
        ),
        path="/schema",
        components=Components(
            security_schemes={
                "ApiKey": SecurityScheme(
                    type="apiKey", name="X-API-Key", security_scheme_in="header"
                ),
                "Bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
            }
        ),
        security=[{"ApiKey": []}, {"Bearer": []}],
    )


def create_app(settings: Settings, runtime: Runtime | None = None) -> Litestar:
    rt = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.runtime = rt
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    app = Litestar(
        route_handlers=[
            SystemController,
            AuthController,
            DomainController,
            DnsController,
            EventsController,
            AuditController,
            QuarantineController,
            DkimController,
            TlsController,
            MailboxController,
            AliasController,
            TokenController,
            SecurityController,
            ConfigController,
            OverridesController,
            WhitelistController,
            ReconcileController,
            QueueController,
            BackupController,
            RevertController,
            ui_router,
        ],
        lifespan=[lifespan],
        on_shutdown=[close_time_travel],
        middleware=[AuthMiddleware()],
        exception_handlers={Exception: handle},
        openapi_config=_openapi(),
        debug=False,
    )
    app.state.settings = settings
    app.state.runtime = rt
    return app
