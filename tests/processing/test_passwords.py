"""Student passwords at rest (SPEC §4): AES-GCM with a fresh random nonce per password."""

from __future__ import annotations

from processing.passwords import StudentPasswords

KEY = bytes(range(32))


def test_a_runs_passwords_encrypt_in_one_batch_and_decrypt_one_by_one() -> None:
    passwords = StudentPasswords(KEY)
    plain = ["Pw-S1-q7Z", "Pw-S1-q7Z", "élève-Ünïcode", "x" * 64]
    blobs = passwords.encrypt_many(plain)
    assert [passwords.decrypt(blob) for blob in blobs] == plain
    assert len({blob[:12] for blob in blobs}) == len(blobs)  # one nonce each
    assert blobs[0] != blobs[1]  # the same password twice is not the same blob
    assert all(p.encode() not in blob for p, blob in zip(plain, blobs, strict=True))
    assert passwords.encrypt_many([]) == []
