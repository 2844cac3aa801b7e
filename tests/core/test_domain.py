"""Domain decider rules."""

from core import domain
from core.domain import CreateDomain, DeleteDomain, DomainState, UpdateDomain
from core.errors import Conflict, NotFound, ValidationFailed
from core.events import DomainCreated, DomainDeleted, DomainUpdated
from tests.core.scenario import Scenario


def scenario() -> Scenario[DomainState]:
    return Scenario(DomainState(), domain.decide, domain.evolve)


def test_new_domain_is_created():
    scenario().when(CreateDomain(name="example.com")).then(DomainCreated(name="example.com"))


def test_created_domain_keeps_its_outgoing_ip():
    scenario().when(CreateDomain(name="example.com", outgoing_ip="203.0.113.10")).then(
        DomainCreated(name="example.com", outgoing_ip="203.0.113.10")
    )


def test_existing_domain_name_conflicts():
    scenario().given(DomainCreated(name="example.com")).when(
        CreateDomain(name="example.com")
    ).then_raises(Conflict)


def test_deleted_domain_name_can_be_created_again():
    scenario().given(
        DomainCreated(name="example.com"), DomainDeleted(id=1, name="example.com")
    ).when(CreateDomain(name="example.com")).then(DomainCreated(name="example.com"))


def test_single_label_name_is_refused():
    err = scenario().when(CreateDomain(name="localhost")).then_raises(ValidationFailed)
    assert isinstance(err, ValidationFailed) and err.field == "name"


def test_label_starting_with_hyphen_is_refused():
    scenario().when(CreateDomain(name="-bad.example")).then_raises(ValidationFailed)


def test_invalid_outgoing_ip_is_refused():
    err = (
        scenario()
        .when(CreateDomain(name="a.example", outgoing_ip="300.1.1.1"))
        .then_raises(ValidationFailed)
    )
    assert isinstance(err, ValidationFailed) and err.field == "outgoing_ip"


def test_deactivating_records_the_new_state():
    scenario().given(DomainCreated(name="example.com")).when(UpdateDomain(id=1, active=False)).then(
        DomainUpdated(id=1, name="example.com", active=False, outgoing_ip="")
    )


def test_update_that_changes_nothing_decides_nothing():
    scenario().given(DomainCreated(name="example.com")).when(UpdateDomain(id=1, active=True)).then()


def test_ipv6_outgoing_ip_is_stored_canonical():
    scenario().given(DomainCreated(name="example.com")).when(
        UpdateDomain(id=1, outgoing_ip="2001:DB8:0:0::1")
    ).then(DomainUpdated(id=1, name="example.com", active=True, outgoing_ip="2001:db8::1"))


def test_update_of_unknown_domain_is_not_found():
    scenario().when(UpdateDomain(id=7, active=False)).then_raises(NotFound)


def test_delete_names_the_domain():
    scenario().given(DomainCreated(name="example.com")).when(DeleteDomain(id=1)).then(
        DomainDeleted(id=1, name="example.com")
    )


def test_delete_of_other_id_is_not_found():
    scenario().given(DomainCreated(name="example.com")).when(DeleteDomain(id=2)).then_raises(
        NotFound
    )
