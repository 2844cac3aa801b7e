"""Alias decider rules."""

from core import alias
from core.alias import AliasState, CreateAlias, DeleteAlias, UpdateAlias
from core.errors import Conflict, NotFound, ValidationFailed
from core.events import AliasCreated, AliasDeleted, AliasUpdated, MailboxCreated
from core.mailbox import DomainRef
from tests.core.scenario import Scenario

DOMAIN = DomainRef(id=1, name="example.com")


def evolve(state: AliasState, event, seq: int) -> AliasState:
    if isinstance(event, MailboxCreated):
        from core.mailbox import AddressState

        return AliasState(at=AddressState(kind="mailbox", id=seq, address=event.address))
    return alias.evolve(state, event, seq)


def scenario() -> Scenario[AliasState]:
    return Scenario(AliasState(), alias.decide, evolve)


def create(source: str, *dests: str, domain: DomainRef = DOMAIN) -> CreateAlias:
    return CreateAlias(domain=domain, source=source, destinations=dests)


def test_alias_to_one_destination_is_created():
    scenario().when(create("info@example.com", "alice@example.com")).then(
        AliasCreated(domain_id=1, source="info@example.com", destination="alice@example.com")
    )


def test_several_destinations_are_joined_without_duplicates():
    scenario().when(create("info@example.com", "a@x.org", "b@y.org", "a@x.org")).then(
        AliasCreated(domain_id=1, source="info@example.com", destination="a@x.org, b@y.org")
    )


def test_catch_all_is_accepted():
    scenario().when(create("@example.com", "alice@example.com")).then(
        AliasCreated(domain_id=1, source="@example.com", destination="alice@example.com")
    )


def test_unmanaged_source_domain_is_refused_with_seed_message():
    scenario().when(create("info@other.org", "a@x.org", domain=DomainRef())).then_raises(
        ValidationFailed, "source domain other.org is not managed by this server"
    )


def test_source_without_at_is_refused():
    scenario().when(create("info", "a@x.org")).then_raises(
        ValidationFailed, "source must be of the form local@domain"
    )


def test_alias_to_itself_is_refused():
    scenario().when(create("info@example.com", "info@example.com")).then_raises(ValidationFailed)


def test_empty_destination_is_refused():
    scenario().when(create("info@example.com")).then_raises(ValidationFailed)


def test_existing_alias_conflicts():
    scenario().given(
        AliasCreated(domain_id=1, source="info@example.com", destination="a@x.org")
    ).when(create("info@example.com", "b@x.org")).then_raises(Conflict, "alias already exists")


def test_mailbox_address_conflicts():
    scenario().given(
        MailboxCreated(
            domain_id=1, username="info", address="info@example.com", password_hash="{ARGON2ID}x"
        )
    ).when(create("info@example.com", "b@x.org")).then_raises(Conflict, "address in use")


def test_destination_change_is_recorded():
    scenario().given(
        AliasCreated(domain_id=1, source="info@example.com", destination="a@x.org")
    ).when(UpdateAlias(id=1, destinations=("b@x.org",))).then(
        AliasUpdated(id=1, source="info@example.com", destination="b@x.org")
    )


def test_same_destination_decides_nothing():
    scenario().given(
        AliasCreated(domain_id=1, source="info@example.com", destination="a@x.org")
    ).when(UpdateAlias(id=1, destinations=("a@x.org",))).then()


def test_delete_of_unknown_alias_is_not_found():
    scenario().when(DeleteAlias(id=9)).then_raises(NotFound)


def test_delete_names_the_source():
    scenario().given(
        AliasCreated(domain_id=1, source="info@example.com", destination="a@x.org")
    ).when(DeleteAlias(id=1)).then(AliasDeleted(id=1, source="info@example.com"))
