"""A labelled corpus of fake secrets in realistic formats, for measuring redaction recall.

Every value is generated here by a seeded random generator, in the shape the issuing service uses
(prefix, alphabet, length; card numbers with a valid Luhn digit), so no real credential is in the
repository and no scanner mistakes this file for a leak. Each case is a kind, the secret value(s)
that must not leave, and a sentence placing it the way people paste it: in a ``.env``, a command, a
config file, JSON, or split and encoded (the obfuscations of issue 18).

:func:`cases` gives each case twice: once as the user's words and once as the assistant's.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass

_rng = random.Random(18)
ALNUM = string.ascii_letters + string.digits
LOWER_HEX = "0123456789abcdef"
UPPER_ALNUM = string.ascii_uppercase + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "_-"


def rand(alphabet: str, length: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(length))


def luhn_number(prefix: str, length: int) -> str:
    """A card number of ``length`` digits starting with ``prefix`` whose Luhn check digit is right."""
    body = prefix + "".join(_rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        candidate = body + check
        total = 0
        for position, char in enumerate(reversed(candidate)):
            number = int(char)
            if position % 2 == 1:
                number = number * 2 - 9 if number > 4 else number * 2
            total += number
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Case:
    kind: str
    #: The values that must not appear in what is sent (each one whole).
    secrets: tuple[str, ...]
    text: str
    role: str = "user"


def _templates() -> list[tuple[str, tuple[str, ...], str]]:
    """(kind, secrets, text) for every kind."""
    found: list[tuple[str, tuple[str, ...], str]] = []

    def add(kind: str, text: str, *secrets: str) -> None:
        found.append((kind, secrets, text))

    aws_id, aws_secret, session_token = "ASIA" + rand(UPPER_ALNUM, 16), rand(B64, 40), rand(B64, 300)
    sts = {"Credentials": {"AccessKeyId": aws_id, "SecretAccessKey": aws_secret, "SessionToken": session_token}}
    add(
        "aws_sts_json", f"aws sts assume-role returned:\n{json.dumps(sts, indent=2)}", aws_id, aws_secret, session_token
    )
    key_id, key_secret = "AKIA" + rand(UPPER_ALNUM, 16), rand(B64, 40)
    add("aws_env", f"export AWS_ACCESS_KEY_ID={key_id}\nexport AWS_SECRET_ACCESS_KEY={key_secret}", key_id, key_secret)
    cred_secret = rand(B64, 40)
    add(
        "aws_credentials_file",
        f"[default]\naws_access_key_id = AKIA{rand(UPPER_ALNUM, 16)}\naws_secret_access_key = {cred_secret}",
        cred_secret,
    )
    glpat = "glpat-" + rand(URLSAFE, 20)
    add("gitlab_pat", f"use this token for the registry: {glpat}", glpat)
    account_key = rand(B64, 86) + "=="
    add(
        "azure_storage_connection_string",
        f"AZURE_STORAGE=DefaultEndpointsProtocol=https;AccountName=prodlogs;AccountKey={account_key};EndpointSuffix=core.windows.net",
        account_key,
    )
    add("pgpassword_7_chars", "run it with PGPASSWORD=Xy7#kq2 psql -h db -U app", "Xy7#kq2")
    add("password_with_space", "db.connect(host, Password='blue Whale 42 sky')", "blue Whale 42 sky")
    npm = "npm_" + rand(ALNUM, 36)
    add("npm_token", f"NPM_TOKEN={npm} npm publish", npm)
    pypi = "pypi-AgEIcHlwaS5vcmc" + rand(URLSAFE, 120)
    add("pypi_token", f"twine upload -u __token__ -p {pypi} dist/*", pypi)
    sid, auth = "AC" + rand(LOWER_HEX, 32), rand(LOWER_HEX, 32)
    add(
        "twilio_in_code",
        f"account_sid = '{sid}'\nauth_token = '{auth}'\nclient = Client(account_sid, auth_token)",
        sid,
        auth,
    )
    sendgrid = "SG." + rand(URLSAFE, 22) + "." + rand(URLSAFE, 43)
    add("sendgrid_key", f"sg = SendGridAPIClient('{sendgrid}')", sendgrid)
    dd = rand(LOWER_HEX, 32)
    add("datadog_header", f'curl -X POST https://api.datadoghq.com/api/v1/series -H "DD-API-KEY: {dd}"', dd)
    heroku = "HRKU-AA" + rand(URLSAFE, 58)
    add("heroku_token", f"the deploy token is {heroku}", heroku)
    kube_token = rand(URLSAFE, 48)
    add("kubectl_token", f"kubectl --token={kube_token} get pods -n prod", kube_token)
    client_key = base64.b64encode(b"-----BEGIN RSA PRIVATE KEY-----\n" + rand(B64, 120).encode()).decode()
    add("kubeconfig_client_key_data", f"users:\n- name: admin\n  user:\n    client-key-data: {client_key}", client_key)
    add("curl_basic_user", "curl -u deploy:Tr0ub4dor3x https://ci.internal/api", "Tr0ub4dor3x")
    key_base = rand(LOWER_HEX, 128)
    add("rails_secret_key_base", f"SECRET_KEY_BASE={key_base}\nRAILS_ENV=production", key_base)
    sentry_key = rand(LOWER_HEX, 32)
    add("sentry_dsn", f"SENTRY_DSN=https://{sentry_key}@o123456.ingest.sentry.io/4504", sentry_key)
    visa = luhn_number("4", 16)
    add("card_number_visa", f"test with card {visa[:4]} {visa[4:8]} {visa[8:12]} {visa[12:]} exp 12/29", visa[4:])
    amex = luhn_number("37", 15)
    add("card_number_amex", f"the corporate card is {amex}", amex)
    split = "ghp_" + rand(ALNUM, 36)
    add("token_split_across_lines", f"token: {split[:20]}\n{split[20:]}", split[:20], split[20:])
    escaped_pw = "s3cr3t hunter2 pass"
    add("escaped_json_password", json.dumps(json.dumps({"user": "svc", "password": escaped_pw})), escaped_pw)
    wrapped_secret = rand(B64, 40)
    wrapped = base64.b64encode(f"AWS_SECRET_ACCESS_KEY={wrapped_secret}".encode()).decode()
    add("base64_wrapped_assignment", f"the CI variable holds {wrapped}", wrapped, wrapped_secret)
    escaped_token = "ghp" + "\\u005f" + rand(ALNUM, 36)
    add("unicode_escaped_token", f'"GITHUB_TOKEN": "{escaped_token}"', escaped_token[9:])
    ant = "sk-ant-api03-" + rand(URLSAFE, 93) + "AA"
    add("anthropic_key", f"ANTHROPIC_API_KEY={ant}", ant)
    openai = "sk-proj-" + rand(URLSAFE, 64)
    add("openai_key", f'client = OpenAI(api_key="{openai}")', openai)
    ghp = "ghp_" + rand(ALNUM, 36)
    add("github_pat_classic", f"git clone https://{ghp}@github.com/acme/app.git", ghp)
    fine = "github_pat_" + rand(ALNUM, 22) + "_" + rand(ALNUM, 59)
    add("github_pat_fine_grained", f"GH_TOKEN={fine} gh pr list", fine)
    slack = "xoxb-" + rand(string.digits, 12) + "-" + rand(string.digits, 13) + "-" + rand(ALNUM, 24)
    add("slack_bot_token", f"SLACK_BOT_TOKEN: {slack}", slack)
    hook = (
        "https://hooks.slack.com/services/T"
        + rand(UPPER_ALNUM, 8)
        + "/B"
        + rand(UPPER_ALNUM, 8)
        + "/"
        + rand(ALNUM, 24)
    )
    add("slack_webhook", f"post alerts to {hook}", hook)
    gkey = "AIza" + rand(URLSAFE, 35)
    add("google_api_key", f"maps key {gkey}", gkey)
    stripe = "sk_live_" + rand(ALNUM, 24)
    add("stripe_live_key", f'Stripe.api_key = "{stripe}"', stripe)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0." + rand(URLSAFE, 43)
    add("jwt", f"the session cookie is {jwt}", jwt)
    bearer = rand(URLSAFE, 40)
    add("bearer_header", f"Authorization: Bearer {bearer}", bearer)
    url_pw = "pA55-" + rand(ALNUM, 10)
    add("postgres_url", f"DATABASE_URL=postgres://app:{url_pw}@db.internal:5432/app", url_pw)
    mongo_pw = rand(ALNUM, 14)
    add("mongodb_srv", f"mongodb+srv://admin:{mongo_pw}@cluster0.ab1cd.mongodb.net/test", mongo_pw)
    pem_body = "\n".join(rand(B64, 64) for _ in range(8))
    add(
        "pem_private_key",
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{pem_body}\n-----END OPENSSH PRIVATE KEY-----",
        pem_body,
    )
    add("mysql_password_flag", "mysql --password=Qz8!vv0pLm -h db", "Qz8!vv0pLm")
    add("yaml_password", 'database:\n  username: app\n  password: "c0rrect horse"', "c0rrect horse")
    add("yaml_bare_password", "redis:\n  host: cache.internal\n  password: tangerinecloud\n", "tangerinecloud")
    add("django_secret_key", "SECRET_KEY = 'dj-" + (django := rand(ALNUM + "!@#%^&*", 46)) + "'", django)
    hf = "hf_" + rand(ALNUM, 34)
    add("huggingface_token", f"huggingface-cli login --token {hf}", hf)
    do = "dop_v1_" + rand(LOWER_HEX, 64)
    add("digitalocean_token", f"doctl auth init -t {do}", do)
    vault = "hvs." + rand(URLSAFE, 90)
    add("vault_token", f"VAULT_TOKEN={vault} vault kv get secret/app", vault)
    discord = "M" + rand(URLSAFE, 25) + "." + rand(URLSAFE, 6) + "." + rand(URLSAFE, 27)
    add("discord_bot_token", f"bot.run('{discord}')", discord)
    telegram = rand(string.digits, 10) + ":" + rand(URLSAFE, 35)
    add("telegram_bot_token", f"https://api.telegram.org/bot{telegram}/getMe", telegram)
    mailchimp = rand(LOWER_HEX, 32) + "-us14"
    add("mailchimp_key", f"mailchimp.set_config({{'api_key': '{mailchimp}'}})", mailchimp)
    square = "sq0csp-" + rand(URLSAFE, 43)
    add("square_oauth_secret", f"client secret {square}", square)
    shopify = "shpat_" + rand(LOWER_HEX, 32)
    add("shopify_token", f"X-Shopify-Access-Token: {shopify}", shopify)
    databricks = "dapi" + rand(LOWER_HEX, 32)
    add("databricks_token", f"databricks configure --token  # then paste {databricks}", databricks)
    gcp = "GOCSPX-" + rand(URLSAFE, 28)
    add("google_oauth_client_secret", f'"client_secret": "{gcp}"', gcp)
    age = "AGE-SECRET-KEY-1" + "".join(_rng.choice("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L") for _ in range(58))
    add("age_secret_key", f"# created: 2025-01-01\n{age}", age)
    ado = rand(ALNUM, 12)
    add("ado_connection_string", f"Server=tcp:sql.internal,1433;Database=app;User Id=sa;Password={ado};", ado)
    netrc = rand(ALNUM, 16)
    add("netrc_password", f"machine api.internal login ci password {netrc}", netrc)
    api_key_header = rand(ALNUM, 40)
    add("x_api_key_header", f"requests.get(url, headers={{'X-Api-Key': '{api_key_header}'}})", api_key_header)
    return found


def cases() -> list[Case]:
    """Every kind as the user's words and as the assistant's."""
    found = []
    for kind, secrets, text in _templates():
        found.append(Case(kind, secrets, f"Here is what I have:\n{text}\nplease fix the deploy.", "user"))
        found.append(Case(kind, secrets, f"I see the problem in this part:\n{text}\nLet me change it.", "assistant"))
    return found
