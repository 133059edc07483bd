"""What a failed Microsoft Entra ID sign-in means, phrased for the credential check (pure functions).

topn signs in with azure-identity's DefaultAzureCredential; these turn its errors, and a service's
refusal of the token it got, into messages that name the cause and the fix and carry no token.
"""

from __future__ import annotations

import re

from azure.core.exceptions import HttpResponseError

# The resource a token must be issued for (its audience), per section: what azure-batch and
# azure-storage-blob ask DefaultAzureCredential for by default, Azure's public cloud.
TOKEN_RESOURCES = {"batch": "https://batch.core.windows.net/", "storage": "https://storage.azure.com/"}

# One attempt in DefaultAzureCredential's error: "\tManagedIdentityCredential: why it failed".
_TOKEN_ATTEMPT = re.compile(r"^\t(\w+Credential): (.*)$", re.MULTILINE)
# Sentences that only point at a troubleshooting page.
_LINK_SENTENCES = ("Visit", "See", "To ")


def describe_token_failure(message: str) -> str:
    """What each credential source DefaultAzureCredential tried said, without its troubleshooting links."""
    attempts = _TOKEN_ATTEMPT.findall(message)
    if not attempts:
        return " ".join(message.split())[:300]
    described = []
    for name, reason in attempts:
        sentences = [
            sentence.strip().rstrip(".")
            for sentence in re.split(r"(?<=\.)\s+", reason)
            if sentence.strip() and "http" not in sentence and not sentence.startswith(_LINK_SENTENCES)
        ]
        summary = " ".join(". ".join(sentences[:2]).removeprefix(name).split()) or "failed"
        described.append(f"{name}: {summary[:160]}")
    return "DefaultAzureCredential tried " + "; ".join(described)


def is_audience_error(exc: HttpResponseError, code: str) -> bool:
    """Whether a refusal (401, or Azurite's 403) says the token was issued for another resource."""
    # Batch names it by its code; Storage answers AuthenticationFailed or InvalidAuthenticationInfo
    # and names the audience in its message.
    return code == "InvalidAuthenticationTokenAudience" or "audience" in str(exc.message).lower()


def audience_refused(service: str, account: str, endpoint: str, code: str, section: str) -> str:
    """The message for a token the service refused because of its audience."""
    resource = TOKEN_RESOURCES[section]
    return (
        f"the {service} account {account!r} at {endpoint} refused the token ({code}): it was issued "
        f"for another audience than {resource}, the resource topn asks for (Azure's public cloud). "
        "The token source answered for another resource: check which identity DefaultAzureCredential "
        "signed in with (AZURE_* variables, a managed identity's IDENTITY_ENDPOINT, `az login`) and "
        "that the account is in Azure's public cloud."
    )
