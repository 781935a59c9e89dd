"""Prints the MSK IAM tokens that runnel's signer (`libs/log/src/msk_iam.rs`) must reproduce.

AWS's reference signer, frozen at a fixed signing time, for the test vectors in
`msk_iam.rs`'s tests. Run it in a scratch virtual environment:

    python3 -m venv /tmp/msk-venv
    /tmp/msk-venv/bin/pip install aws-msk-iam-sasl-signer-python==1.0.2 botocore==1.44.18
    /tmp/msk-venv/bin/python libs/log/tests/msk_iam_reference.py

The signer takes its time from `botocore.auth.get_current_datetime` and its User-Agent
from the installed package's version; both are pinned here so the output does not depend
on either.
"""

import datetime

import botocore.auth
from botocore.credentials import Credentials

from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

SIGNING_TIME = datetime.datetime(2024, 5, 17, 8, 30, 5)  # UTC, naive, as botocore uses it
botocore.auth.get_current_datetime = lambda remove_tzinfo=True: SIGNING_TIME
MSKAuthTokenProvider.__get_user_agent__ = lambda: "runnel"

KEY_ID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE/session+token=="

for name, credentials in [
    ("with session token", Credentials(KEY_ID, SECRET, SESSION_TOKEN)),
    ("without session token", Credentials(KEY_ID, SECRET)),
]:
    # A private function: the public ones load credentials from the environment.
    construct_auth_token = getattr(MSKAuthTokenProvider, "__construct_auth_token")
    token, expiry_ms = construct_auth_token("eu-west-1", credentials)
    print(f"{name}: expiry_ms={expiry_ms}")
    print(token)
