"""The auth use cases on a migrated SQLite database: users, keys and key lookup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from switchyard.auth.keys import hash_api_key
from switchyard.auth.plugin import MIGRATIONS_DIR
from switchyard.auth.service import (
    AuthService,
    DuplicateEmail,
    InvalidCredentials,
    InvalidInput,
    UserNotFound,
)
from switchyard.common.db import sync_url, upgrade


async def test_emails_are_case_insensitive_and_unique(service: AuthService) -> None:
    user = await service.create_user(email="  Alice@Example.COM ", tenant="acme", role="admin")
    assert user.email == "alice@example.com"
    assert user.created_at.tzinfo is not None
    with pytest.raises(DuplicateEmail, match="alice@example.com"):
        await service.create_user(email="ALICE@example.com")
    assert (await service.user_by_email("ALICE@EXAMPLE.COM")).id == user.id


async def test_an_email_is_one_address_however_its_characters_are_composed(
    service: AuthService,
) -> None:
    # `josé@` with a composed `é` or with `e` and a combining accent look alike: two users
    # under them could be told apart by nobody (RFC 6532 compares the NFC form).
    user = await service.create_user(
        email="jose\u0301@example.com", tenant="acme", password="s3cret!"
    )
    assert user.email == "jos\u00e9@example.com"
    with pytest.raises(DuplicateEmail):
        await service.create_user(email="JOS\u00c9@example.com")
    assert (await service.user_by_email("jos\u00e9@example.com")).id == user.id
    signed_in = await service.authenticate("jose\u0301@EXAMPLE.com", "s3cret!")
    assert signed_in.id == user.id


async def test_an_email_in_full_width_letters_is_the_same_address(service: AuthService) -> None:
    # `ａｌｉｃｅ@` in full-width letters reads as `alice@`: one account, stored folded
    # (NFKC), found and signed in to however it is typed.
    wide = "\uff21\uff4c\uff49\uff43\uff45@example.com"
    user = await service.create_user(email=wide, tenant="acme", password="s3cret!")
    assert user.email == "alice@example.com"
    with pytest.raises(DuplicateEmail):
        await service.create_user(email="alice@example.com")
    assert (await service.user_by_email(wide)).id == user.id
    assert (await service.authenticate("ALICE@example.com", "s3cret!")).id == user.id
    assert (await service.authenticate(wide, "s3cret!")).id == user.id
    # A domain written with the DNS root's trailing dot is the same domain.
    with pytest.raises(DuplicateEmail):
        await service.create_user(email="alice@example.com.")
    assert (await service.authenticate("alice@example.com.", "s3cret!")).id == user.id


async def test_an_email_mixing_scripts_with_look_alike_letters_is_refused(
    service: AuthService,
) -> None:
    # `аlice@` with a Cyrillic `а` would read as `alice@`, an account of its own.
    with pytest.raises(InvalidInput, match="look-alike") as refused:
        await service.create_user(email="\u0430lice@example.com", tenant="acme")
    assert refused.value.param == "email" and "U+0430" in str(refused.value)
    with pytest.raises(InvalidInput, match="look-alike"):
        await service.create_user(email="alice@ex\u0430mple.com", tenant="acme")
    # A part in one script is an address (`иван@` in Cyrillic, a Latin domain).
    user = await service.create_user(email="\u0438\u0432\u0430\u043d@example.com", tenant="acme")
    assert user.email == "\u0438\u0432\u0430\u043d@example.com"
    # Looking one up is no refusal: an unknown address is only not found.
    with pytest.raises(UserNotFound):
        await service.user_by_email("\u0430lice@example.com")


async def test_bad_user_input_is_refused_with_a_reason(service: AuthService) -> None:
    with pytest.raises(InvalidInput, match="valid email"):
        await service.create_user(email="not-an-email")
    with pytest.raises(InvalidInput, match="Role"):
        await service.create_user(email="a@b.c", role="owner")
    with pytest.raises(UserNotFound):
        await service.user_by_email("nobody@example.com")


async def test_password_check(service: AuthService) -> None:
    await service.create_user(email="bob@example.com", password="s3cret!")
    assert (await service.authenticate("BOB@example.com", "s3cret!")).email == "bob@example.com"
    with pytest.raises(InvalidCredentials):
        await service.authenticate("bob@example.com", "wrong")
    with pytest.raises(InvalidCredentials) as unknown:
        await service.authenticate("nobody@example.com", "s3cret!")
    assert str(unknown.value) == "Incorrect email or password."


async def test_a_created_key_resolves_to_its_owner(service: AuthService) -> None:
    user = await service.create_user(email="carol@example.com", tenant="acme", role="member")
    expires = datetime.now(UTC) + timedelta(days=30)
    issued = await service.create_api_key(
        user_id=user.id, name="ci", scopes=["chat"], allowed_models=["gpt-4o"], expires_at=expires
    )
    identity = await service.lookup_api_key(hash_api_key(issued.key))
    assert identity is not None
    assert (identity.key_id, identity.user_id, identity.tenant, identity.role) == (
        issued.record.id,
        user.id,
        "acme",
        "member",
    )
    assert identity.scopes == ["chat"] and identity.allowed_models == ["gpt-4o"]
    assert identity.expires_at == expires
    assert issued.record.prefix == issued.key[:12]
    assert await service.lookup_api_key(hash_api_key(issued.key + "x")) is None


async def test_the_raw_key_is_never_written_to_the_database(
    service: AuthService, database_url: str
) -> None:
    user = await service.create_user(email="dave@example.com")
    issued = await service.create_api_key(user_id=user.id)
    database_file = Path(make_url(database_url).database)
    stored = b"".join(
        path.read_bytes() for path in database_file.parent.glob(database_file.name + "*")
    )
    assert hash_api_key(issued.key).encode() in stored
    assert issued.key.encode() not in stored


async def test_revoked_and_expired_keys_are_not_found(service: AuthService) -> None:
    user = await service.create_user(email="erin@example.com")
    revoked = await service.create_api_key(user_id=user.id, name="old")
    await service.revoke_api_key(revoked.record.id)
    assert await service.lookup_api_key(hash_api_key(revoked.key)) is None

    expires = datetime.now(UTC) + timedelta(days=1)
    expiring = await service.create_api_key(user_id=user.id, name="short", expires_at=expires)
    key_hash = hash_api_key(expiring.key)
    assert await service.lookup_api_key(key_hash, now=expires - timedelta(seconds=1)) is not None
    assert await service.lookup_api_key(key_hash, now=expires) is None


async def test_a_disabled_user_can_neither_sign_in_nor_use_keys(service: AuthService) -> None:
    user = await service.create_user(email="frank@example.com", password="pw")
    issued = await service.create_api_key(user_id=user.id)
    await service.set_disabled(user.id, True)
    with pytest.raises(InvalidCredentials):
        await service.authenticate("frank@example.com", "pw")
    assert await service.lookup_api_key(hash_api_key(issued.key)) is None
    await service.set_disabled(user.id, False)
    assert await service.lookup_api_key(hash_api_key(issued.key)) is not None


async def test_key_scopes_default_and_are_validated(service: AuthService) -> None:
    user = await service.create_user(email="gina@example.com")
    issued = await service.create_api_key(user_id=user.id)
    assert issued.record.scopes == ["chat", "history:read"]
    with pytest.raises(InvalidInput, match="Unknown scope"):
        await service.create_api_key(user_id=user.id, scopes=["chat", "root"])
    with pytest.raises(InvalidInput, match="future"):
        await service.create_api_key(user_id=user.id, expires_at=datetime.now(UTC))


def test_the_migration_folds_stored_emails_unless_the_folded_one_is_taken(tmp_path: Path) -> None:
    """Accounts stored before emails were folded are found by their folded form after
    revision 0005; one whose folded form is another account's keeps its email."""
    url = f"sqlite+aiosqlite:///{tmp_path}/auth.db"
    upgrade(str(MIGRATIONS_DIR), url, "alembic_version_auth", "0004")
    emails = {
        "wide": "\uff42\uff4f\uff42@example.com",
        "taken": "\uff41\uff4c\uff49\uff43\uff45@example.com",
        "alice": "alice@example.com",
        "plain": "jos\u00e9@example.com",
        "dotted": "carol@example.com.",
    }
    engine = sa.create_engine(sync_url(url))
    now = "2026-01-01 00:00:00"
    with engine.begin() as connection:
        for user_id, email in emails.items():
            connection.execute(
                sa.text(
                    "INSERT INTO auth_users (id, email, tenant, role, disabled, created_at) "
                    "VALUES (:id, :email, 'acme', 'member', false, :now)"
                ),
                {"id": user_id, "email": email, "now": now},
            )
    upgrade(str(MIGRATIONS_DIR), url, "alembic_version_auth")
    with engine.connect() as connection:
        stored = dict(connection.execute(sa.text("SELECT id, email FROM auth_users")).all())
    engine.dispose()
    assert stored == {
        "wide": "bob@example.com",
        "taken": emails["taken"],
        "alice": "alice@example.com",
        "plain": "jos\u00e9@example.com",
        "dotted": "carol@example.com",
    }


async def test_an_address_kept_unfolded_is_found_by_its_own_spelling(service: AuthService) -> None:
    """Migration 0005 leaves a stored full-width address whose folded form is another
    account's: the CLI's `--email` must still reach it (to disable it), not the other."""
    from switchyard.auth.models import User

    alice = await service.create_user(email="alice@example.com", tenant="acme")
    wide = "\uff41\uff4c\uff49\uff43\uff45@example.com"
    async with service.sessions() as session:
        kept = User(email=wide, tenant="acme", role="member")
        session.add(kept)
        await session.commit()
        kept_id = kept.id
    assert (await service.user_by_email(wide)).id == kept_id
    assert (await service.user_by_email(" " + wide + " ")).id == kept_id
    assert (await service.user_by_email("ALICE@example.com")).id == alice.id
    assert (await service.user_by_email("alice@example.com")).id == alice.id


def test_an_ascii_address_never_loads_the_confusables_data() -> None:
    # The data costs about 17 MiB once loaded: embedded mode, which creates its dev user
    # at start, must not pay it for an address that cannot mix scripts.
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from switchyard.auth.service import normalise_email\n"
        "assert normalise_email(' Dev@Switchyard.local ', new=True) == 'dev@switchyard.local'\n"
        "assert 'confusable_homoglyphs' not in sys.modules, 'the data was loaded'\n"
        "normalise_email('\\u0438\\u0432\\u0430\\u043d@example.com', new=True)\n"
        "assert 'confusable_homoglyphs' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
