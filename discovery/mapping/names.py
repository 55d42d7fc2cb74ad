"""Column-name rules, English and Norwegian: what a column's name says it holds.

A name is split into words (snake_case, camelCase, digits; æ ø å folded to ae o a), and the last word decides
what the column is (`email_template_id` is an id, `phone_model` a model, `billing_email` an e-mail). Words that
only qualify (`template`, `model`, `count`, `verified`, ...) make an otherwise personal-sounding name a non-personal
one. Table names count too: a bare `name` in `products` is a product's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# categories (docs/mapping.md); NONE is "not personal"
EMAIL, NAME, PHONE, ADDRESS, NATIONAL_ID, BIRTH_DATE = "email", "name", "phone", "address", "national_id", "birth_date"
IP, ONLINE_ID, BANK_ACCOUNT, PAYMENT_CARD, FREE_TEXT, NONE = (
    "ip_address", "online_id", "bank_account", "payment_card", "free_text", "none")
CATEGORIES = (EMAIL, NAME, PHONE, ADDRESS, NATIONAL_ID, BIRTH_DATE, IP, ONLINE_ID, BANK_ACCOUNT, PAYMENT_CARD,
              FREE_TEXT)

# Whole names (after folding and joining words with _) and single words -> (category, weight). Weight 0.75 is a
# name that says it plainly; 0.5 one that needs the values to agree.
PHRASES: dict[str, tuple[str, float]] = {
    "e_mail": (EMAIL, 0.8), "e_post": (EMAIL, 0.8), "mail_address": (EMAIL, 0.8),
    "first_name": (NAME, 0.8), "last_name": (NAME, 0.8), "given_name": (NAME, 0.8), "family_name": (NAME, 0.8),
    "full_name": (NAME, 0.8), "middle_name": (NAME, 0.8), "display_name": (NAME, 0.55), "contact_person": (NAME, 0.75),
    "fullt_navn": (NAME, 0.8), "contact_name": (NAME, 0.75), "customer_name": (NAME, 0.75), "kunde_navn": (NAME, 0.75),
    "date_of_birth": (BIRTH_DATE, 0.85), "birth_date": (BIRTH_DATE, 0.85), "fodt_dato": (BIRTH_DATE, 0.85),
    "zip_code": (ADDRESS, 0.75), "post_code": (ADDRESS, 0.75), "postal_code": (ADDRESS, 0.75),
    "post_nr": (ADDRESS, 0.75), "post_sted": (ADDRESS, 0.75), "co_adresse": (ADDRESS, 0.75),
    "ip_address": (IP, 0.85), "ip_adresse": (IP, 0.85), "remote_addr": (IP, 0.8), "mac_address": (ONLINE_ID, 0.75),
    "social_security_number": (NATIONAL_ID, 0.9), "national_id": (NATIONAL_ID, 0.85),
    "personal_number": (NATIONAL_ID, 0.8),
    "d_nummer": (NATIONAL_ID, 0.85), "ssn": (NATIONAL_ID, 0.9), "personal_id_number": (NATIONAL_ID, 0.85),
    "card_number": (PAYMENT_CARD, 0.85), "credit_card": (PAYMENT_CARD, 0.85), "cc_number": (PAYMENT_CARD, 0.85),
    "bank_account": (BANK_ACCOUNT, 0.8), "account_number": (BANK_ACCOUNT, 0.55), "konto_nr": (BANK_ACCOUNT, 0.8),
    "user_agent": (ONLINE_ID, 0.7), "visitor_id": (ONLINE_ID, 0.8), "device_id": (ONLINE_ID, 0.75),
    "cookie_id": (ONLINE_ID, 0.8), "external_id": (ONLINE_ID, 0.6), "customer_number": (ONLINE_ID, 0.7),
    "customer_no": (ONLINE_ID, 0.7), "kunde_nr": (ONLINE_ID, 0.7), "kunde_nummer": (ONLINE_ID, 0.7),
    "user_name": (ONLINE_ID, 0.7), "login_name": (ONLINE_ID, 0.7), "session_id": (ONLINE_ID, 0.6),
    "advertising_id": (ONLINE_ID, 0.75), "email_address": (EMAIL, 0.85), "e_mail_address": (EMAIL, 0.85),
    "e_post_adresse": (EMAIL, 0.85), "epost_adresse": (EMAIL, 0.85), "mail_adresse": (EMAIL, 0.8),
    "phone_number": (PHONE, 0.85), "telefon_nummer": (PHONE, 0.85), "mobil_nummer": (PHONE, 0.85),
    "mobile_number": (PHONE, 0.85), "fodsels_nummer": (NATIONAL_ID, 0.9), "person_nummer": (NATIONAL_ID, 0.9),
    "konto_nummer": (BANK_ACCOUNT, 0.8), "fodsels_dato": (BIRTH_DATE, 0.9), "ip_addr": (IP, 0.8),
    "last_ip": (IP, 0.8), "client_ip": (IP, 0.8),
}
# Words after the category's word that keep its meaning (`phone_number`, `email_primary`, `adresse_hjem`).
NEUTRAL = frozenset({"number", "nummer", "nr", "no", "value", "verdi", "field", "felt", "primary", "secondary",
                     "private", "privat", "work", "jobb", "home", "hjem", "personal", "line", "linje",
                     "full", "raw", "text", "1", "2", "alt", "alternative", "backup", "reserve", "contact", "kontakt"})
WORDS: dict[str, tuple[str, float]] = {
    # e-mail
    "email": (EMAIL, 0.8), "epost": (EMAIL, 0.8), "mail": (EMAIL, 0.6), "epostadresse": (EMAIL, 0.85),
    "mailadresse": (EMAIL, 0.85), "emailadresse": (EMAIL, 0.85),
    # names
    "firstname": (NAME, 0.8), "lastname": (NAME, 0.8), "surname": (NAME, 0.8), "fullname": (NAME, 0.8),
    "fornavn": (NAME, 0.8), "etternavn": (NAME, 0.8), "mellomnavn": (NAME, 0.8), "navn": (NAME, 0.5),
    "name": (NAME, 0.5), "kontaktperson": (NAME, 0.75), "givenname": (NAME, 0.8), "kundenavn": (NAME, 0.75),
    # phone
    "phone": (PHONE, 0.8), "telephone": (PHONE, 0.8), "telefon": (PHONE, 0.8), "tlf": (PHONE, 0.8),
    "telefonnummer": (PHONE, 0.85), "mobil": (PHONE, 0.8), "mobile": (PHONE, 0.75), "mobilnummer": (PHONE, 0.85),
    "msisdn": (PHONE, 0.8), "cellphone": (PHONE, 0.8), "fax": (PHONE, 0.6), "telefonnr": (PHONE, 0.85),
    "mobilnr": (PHONE, 0.85), "phonenumber": (PHONE, 0.85),
    # postal address
    "address": (ADDRESS, 0.7), "adresse": (ADDRESS, 0.7), "street": (ADDRESS, 0.7), "gateadresse": (ADDRESS, 0.8),
    "postnr": (ADDRESS, 0.75), "postnummer": (ADDRESS, 0.75), "zip": (ADDRESS, 0.7), "zipcode": (ADDRESS, 0.75),
    "postcode": (ADDRESS, 0.75), "poststed": (ADDRESS, 0.75), "city": (ADDRESS, 0.6), "postadresse": (ADDRESS, 0.8),
    "bosted": (ADDRESS, 0.7), "addr": (ADDRESS, 0.6), "streetaddress": (ADDRESS, 0.8), "town": (ADDRESS, 0.6),
    # national identity numbers
    "fodselsnummer": (NATIONAL_ID, 0.9), "personnummer": (NATIONAL_ID, 0.9), "fnr": (NATIONAL_ID, 0.8),
    "dnummer": (NATIONAL_ID, 0.85), "personnr": (NATIONAL_ID, 0.85), "fodselsnr": (NATIONAL_ID, 0.9),
    "passport": (NATIONAL_ID, 0.75), "passnummer": (NATIONAL_ID, 0.8),
    # birth
    "birthday": (BIRTH_DATE, 0.85), "birthdate": (BIRTH_DATE, 0.85), "dob": (BIRTH_DATE, 0.8),
    "fodselsdato": (BIRTH_DATE, 0.9), "fodt": (BIRTH_DATE, 0.75), "fodselsar": (BIRTH_DATE, 0.7),
    "birth": (BIRTH_DATE, 0.7), "bursdag": (BIRTH_DATE, 0.8),
    # IP addresses
    "ip": (IP, 0.75), "ipv4": (IP, 0.8), "ipv6": (IP, 0.8), "ipadresse": (IP, 0.85), "ipaddress": (IP, 0.85),
    # online identifiers
    "cookie": (ONLINE_ID, 0.7), "fingerprint": (ONLINE_ID, 0.6), "smuuid": (ONLINE_ID, 0.8),
    "smclient": (ONLINE_ID, 0.8), "username": (ONLINE_ID, 0.7), "brukernavn": (ONLINE_ID, 0.75),
    "kundenr": (ONLINE_ID, 0.7), "kundenummer": (ONLINE_ID, 0.7), "useragent": (ONLINE_ID, 0.7),
    "imei": (ONLINE_ID, 0.8), "idfa": (ONLINE_ID, 0.8), "login": (ONLINE_ID, 0.55), "handle": (ONLINE_ID, 0.5),
    # bank and card
    "iban": (BANK_ACCOUNT, 0.85), "kontonummer": (BANK_ACCOUNT, 0.8), "kontonr": (BANK_ACCOUNT, 0.8),
    "bankkonto": (BANK_ACCOUNT, 0.85), "bankkontonummer": (BANK_ACCOUNT, 0.85), "kortnummer": (PAYMENT_CARD, 0.85),
    "pan": (PAYMENT_CARD, 0.6), "creditcard": (PAYMENT_CARD, 0.85), "cardnumber": (PAYMENT_CARD, 0.85),
    # free text that may hold anything
    "notes": (FREE_TEXT, 0.45), "note": (FREE_TEXT, 0.45), "comment": (FREE_TEXT, 0.45),
    "comments": (FREE_TEXT, 0.45), "kommentar": (FREE_TEXT, 0.45), "message": (FREE_TEXT, 0.45),
    "melding": (FREE_TEXT, 0.45), "body": (FREE_TEXT, 0.4), "fritekst": (FREE_TEXT, 0.5),
    "merknad": (FREE_TEXT, 0.45), "notat": (FREE_TEXT, 0.45), "beskjed": (FREE_TEXT, 0.45),
    "description": (FREE_TEXT, 0.35), "beskrivelse": (FREE_TEXT, 0.35), "text": (FREE_TEXT, 0.35),
    "tekst": (FREE_TEXT, 0.35), "remarks": (FREE_TEXT, 0.45), "henvendelse": (FREE_TEXT, 0.45),
}
# Last words that make the column something about the thing, not the thing (`email_template_id`, `phone_model`).
QUALIFIERS = frozenset({
    "id", "ids", "template", "templates", "model", "type", "types", "kind", "status", "state", "count", "counter",
    "antall", "enabled", "verified", "confirmed", "valid", "flag", "at", "on", "sent", "opened", "bounced", "format",
    "length", "hash", "hashed", "domain", "provider", "allowlist", "whitelist", "blocklist", "blacklist", "policy",
    "version", "setting", "settings", "config", "pattern", "regex", "prefix", "suffix", "code", "country", "land",
    "level", "score", "rate", "limit", "max", "min", "key", "token", "label", "required", "optin", "optout",
    "preference", "preferences", "consent", "channel", "visible", "public", "changed", "updated", "created", "tid",
    "dato", "date", "time", "timestamp", "sendt", "lest", "mal", "malid", "variant", "category", "kategori",
    "size", "color", "colour", "brand", "vendor", "os", "language", "sprak", "locale", "timezone", "tz", "algorithm",
})
# Words (anywhere in the name, or the table's name) that say the thing is not a person.
NOT_A_PERSON = frozenset({
    "product", "produkt", "vare", "company", "firma", "bedrift", "org", "organisation", "organization",
    "server", "host", "hostname", "domain", "plan", "file", "fil", "filename", "template", "mal", "category",
    "kategori", "tag", "tags", "brand", "merke", "bucket", "table", "column", "region", "datacenter", "site",
    "project", "prosjekt", "image", "queue", "job", "event", "feature", "package", "pakke", "service", "tjeneste",
    "network", "nettverk", "subnet", "vlan", "sku", "coupon", "campaign", "kampanje", "bank", "warehouse", "lager",
    "shipping_method", "currency", "valuta", "tax", "mva", "role", "rolle", "group", "gruppe", "team", "department",
    "avdeling", "country", "land", "locale", "language", "timezone", "font", "theme", "os", "browser", "model",
    "allowlist", "whitelist", "sender", "avsender", "reply", "smtp", "noreply", "support", "webhook", "callback",
})
# a table whose rows are things, not people: its bare `name`/`navn` is the thing's
THING_TABLES = NOT_A_PERSON | frozenset({"products", "produkter", "varer", "plans", "servers", "templates",
                                         "categories", "kategorier", "files", "tags", "regions", "projects",
                                         "images", "jobs", "events", "features", "packages", "services",
                                         "networks", "coupons", "campaigns", "warehouses", "roles", "groups",
                                         "teams", "departments", "countries", "currencies", "companies",
                                         "firmaer", "organisations", "organizations", "sites"})
_FOLD = str.maketrans({"æ": "ae", "ø": "o", "å": "a", "ä": "a", "ö": "o", "ü": "u", "é": "e"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^a-z0-9]+")


def words(name: str) -> list[str]:
    """`E-postAdresse2` -> ['e', 'post', 'adresse', '2'] ... folded and lower-cased; a word unknown as written but
    known with Norwegian letters spelt out undone (`foedselsnummer`, `foedt` for fødselsnummer, født) is read so."""
    spaced = _CAMEL.sub("_", name).lower().translate(_FOLD)
    return [_unspelt(w) for w in _SPLIT.split(spaced) if w]


def _unspelt(word: str) -> str:
    if word in WORDS or ("oe" not in word and "aa" not in word):
        return word
    folded = word.replace("oe", "o").replace("aa", "a")
    return folded if folded in WORDS or any(folded.endswith(s) for s, _ in _SUFFIXES) else word


@dataclass(frozen=True)
class NameHint:
    category: str
    weight: float
    evidence: str


def hint(column: str, table: str = "") -> NameHint | None:
    """What the column's name says, or None when it says nothing about personal data."""
    ws = [w for w in words(column) if not w.isdigit()]
    if not ws:
        return None
    joined = "_".join(ws)
    table_words = set(words(table))
    found: tuple[str, float, str] | None = None
    end = 0
    # a phrase anywhere in the name (longest first), then the words from the last one backwards
    for size in (4, 3, 2, 1):
        for start in range(len(ws) - size, -1, -1):
            phrase = "_".join(ws[start:start + size])
            rule = PHRASES.get(phrase) or (WORDS.get(phrase) if size == 1 else None)
            if rule:
                found = (rule[0], rule[1], phrase)
                end = start + size
                break
        if found:
            break
    if found is None:
        found = _compound(ws[-1])
        end = len(ws)
        if found is None:
            return None
        if found[0] == NONE:
            return NameHint(NONE, 0.65, f"name: '{ws[-1]}' of a {found[2]}")
    category, weight, phrase = found
    trailing = ws[end:]
    if trailing and (set(trailing) & QUALIFIERS or trailing[-1] in QUALIFIERS):
        return NameHint("none", 0.7, f"name: '{phrase}' qualified by '{'_'.join(trailing)}'")
    if trailing and not all(w in WORDS or w in NEUTRAL for w in trailing) and category != FREE_TEXT:
        # `phone_model`-like words we do not know: the last word is something else
        weight -= 0.2
    others = set(ws) - set(phrase.split("_"))
    if category in (NAME, ADDRESS, EMAIL, PHONE) and (others & NOT_A_PERSON):
        return NameHint("none", 0.65, f"name: '{phrase}' of a {sorted(others & NOT_A_PERSON)[0]}")
    if category == NAME and joined in ("name", "navn") and table_words & THING_TABLES:
        return NameHint("none", 0.6, f"name: '{joined}' in table {table}, whose rows are things")
    lang = "Norwegian" if phrase.replace("_", "") in _NORWEGIAN else "English"
    return NameHint(category, weight, f"name: '{phrase}' ({category}, {lang})")


# Norwegian compounds end in what they are: `fakturaadresse` is an address, `firmanavn` a company's name
_SUFFIXES = (("epostadresse", EMAIL), ("adresse", ADDRESS), ("navn", NAME), ("telefon", PHONE),
             ("epost", EMAIL), ("mobil", PHONE), ("fodselsnummer", NATIONAL_ID))
_THING_PREFIXES = ("firma", "bedrift", "server", "produkt", "vare", "fil", "mal", "domene", "verts", "bank")


def _compound(word: str) -> tuple[str, float, str] | None:
    for suffix, category in _SUFFIXES:
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            prefix = word[: -len(suffix)]
            if prefix.startswith(_THING_PREFIXES):
                return NONE, 0.65, prefix
            return category, WORDS[suffix][1] - 0.05, word
    return None


_NORWEGIAN = frozenset({
    "epost", "epostadresse", "mailadresse", "fornavn", "etternavn", "mellomnavn", "navn", "fulltnavn",
    "kontaktperson", "kundenavn", "telefon", "tlf", "telefonnummer", "telefonnr", "mobil", "mobilnummer", "mobilnr",
    "adresse", "gateadresse", "postnr", "postnummer", "poststed", "postadresse", "bosted", "coadresse",
    "fodselsnummer", "personnummer", "fnr", "dnummer", "personnr", "fodselsnr", "passnummer", "fodselsdato", "fodt",
    "fodtdato", "fodselsar", "bursdag", "ipadresse", "brukernavn", "kundenr", "kundenummer", "kontonummer", "kontonr",
    "bankkonto", "bankkontonummer", "kortnummer", "kommentar", "melding", "fritekst", "merknad", "notat", "beskjed",
    "beskrivelse", "tekst", "henvendelse",
})

# Common given names (Norwegian and English): a share of a column's values starting with one says "names".
_GIVEN_NAMES = """
ola kari per anne jan marit lars ingrid knut liv nils eva hans silje bjorn hilde ole tone arne randi tor kristin
erik hanne jon solveig morten astrid geir berit terje inger odd ragnhild rune heidi svein gunn magnus nora emma
sofie olivia ella maja leah ingeborg thea jakob emil noah oliver william lucas filip henrik aksel sander johannes
mathias kristian andreas martin thomas anders oyvind espen stian marius eirik sindre vegard haakon sigrid ida
camilla linn marte tuva julie malin hedda frida synnove aslaug torbjorn
john mary james patricia robert jennifer michael linda david elizabeth richard barbara joseph susan charles jessica
daniel sarah matthew karen anthony nancy mark lisa donald betty steven margaret paul sandra andrew ashley joshua
kimberly kenneth emily kevin donna brian michelle george carol timothy amanda ronald melissa jason deborah edward
stephanie jeffrey rebecca ryan sharon jacob laura gary cynthia nicholas amy eric kathleen jonathan angela stephen
helen larry anna justin brenda scott pamela brandon nicole benjamin samantha samuel katherine gregory christine
alexander debra frank rachel patrick carolyn raymond janet jack catherine dennis maria jerry heather tyler diane
aaron ruth jose julie adam olivia henry joyce nathan virginia douglas victoria zachary kelly peter lauren kyle
christina noah joan ethan evelyn jeremy judith walter megan christian andrea keith cheryl roger hannah terry jacqueline
austin martha sean gloria gerald teresa carl ann harold sara dylan madison arthur frances lawrence kathryn jordan
janice jesse jean bryan abigail billy alice bruce judy gabriel sophia joe grace logan denise albert amber willie
doris alan marilyn juan danielle wayne beverly elijah isabella randy theresa roy diana vincent natalie ralph brittany
eugene charlotte russell marie bobby kayla mason alexis philip lori louis
"""
FIRST_NAMES = frozenset(_GIVEN_NAMES.split())


def looks_like_person_name(value: str) -> bool:
    """The value starts with a common given name ("Kari Nordmann"), or has one after a comma ("Nordmann, Kari")."""
    given = value.split(",", 1)[1] if "," in value else value
    first = words(given.strip().split(" ", 1)[0])
    return bool(first) and first[0] in FIRST_NAMES
