import pytest

from connectors.emails import InvalidEmail, email_forms, normalise_email


@pytest.mark.parametrize("raw", [" Jane.Doe@Example.com ", "JANE.DOE@EXAMPLE.COM", "jane.doe@example.com\t"])
def test_variants_normalise_to_one_form(raw: str) -> None:
    assert normalise_email(raw) == "jane.doe@example.com"


def test_idn_domain_is_searched_in_both_spellings() -> None:
    forms = email_forms(normalise_email("Ola@Blåbær.no"))
    assert len(forms) == 2 and "ola@blåbær.no" in forms
    ascii_form = next(f for f in forms if f != "ola@blåbær.no")
    assert ascii_form.startswith("ola@xn--") and ascii_form.isascii()
    # Whichever spelling a system stored, searching from either finds both.
    assert sorted(email_forms(ascii_form)) == sorted(forms)


@pytest.mark.parametrize("raw", ["", "   ", "jane", "jane@", "@example.com", "a@@example.com", "jane@example"])
def test_invalid_addresses_are_refused_in_one_line(raw: str) -> None:
    with pytest.raises(InvalidEmail) as err:
        normalise_email(raw)
    message = str(err.value)
    assert message.startswith("invalid e-mail address")
    assert "\n" not in message
