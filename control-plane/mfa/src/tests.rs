use super::*;

/// RFC 6238's SHA-1 secret, "12345678901234567890", in base32.
const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

fn enrolled() -> Enrolment {
    Enrolment {
        operator: "otto".into(),
        secret: RFC_SECRET.into(),
        ..Enrolment::default()
    }
}

#[test]
fn codes_are_rfc_6238s() {
    // Appendix B's SHA-1 values, their last six digits.
    for (t, code) in [
        (59, "287082"),
        (1111111109, "081804"),
        (1234567890, "005924"),
        (2000000000, "279037"),
    ] {
        assert_eq!(code_at(RFC_SECRET, t).unwrap(), code, "t={t}");
    }
}

#[test]
fn a_code_is_good_for_its_step_and_one_either_side_once() {
    let now = 1_234_567_890;
    let mut e = enrolled();
    let code = code_at(RFC_SECRET, now).unwrap();
    e.check(&code, now).unwrap();
    assert_eq!(e.check(&code, now), Err(CodeError::Replayed));
    // The previous step's code is older than the one used: refused too.
    let before = code_at(RFC_SECRET, now - STEP).unwrap();
    assert_eq!(e.check(&before, now), Err(CodeError::Replayed));
    // The next step's is accepted (a clock 30 s ahead), once.
    let next = code_at(RFC_SECRET, now + STEP).unwrap();
    e.check(&next, now).unwrap();
    assert_eq!(e.check(&next, now + STEP), Err(CodeError::Replayed));

    let mut e = enrolled();
    let stale = code_at(RFC_SECRET, now - 2 * STEP).unwrap();
    assert_eq!(e.check(&stale, now), Err(CodeError::Wrong));
    let early = code_at(RFC_SECRET, now + 2 * STEP).unwrap();
    assert_eq!(e.check(&early, now), Err(CodeError::Wrong));
}

#[test]
fn malformed_codes_are_named_and_counted() {
    let mut e = enrolled();
    for bad in ["", "12345", "1234567", "12345a", "１２３４５６"] {
        assert_eq!(e.check(bad, 1000), Err(CodeError::Malformed), "{bad:?}");
    }
    assert_eq!(e.failures.len(), MAX_FAILURES);
    assert!(matches!(
        e.check(" 12345", 1000),
        Err(CodeError::Locked { .. })
    ));
}

#[test]
fn guessing_locks_the_operator_out_even_of_the_right_code() {
    let now = 2_000_000_000;
    let mut e = enrolled();
    let right = code_at(RFC_SECRET, now).unwrap();
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for i in 0..MAX_FAILURES as u64 {
        assert_eq!(e.check(wrong, now + i), Err(CodeError::Wrong));
    }
    match e.check(&right, now + 10) {
        Err(CodeError::Locked { retry_in }) => assert_eq!(retry_in, FAILURE_WINDOW - 10),
        other => panic!("{other:?}"),
    }
    // Once the oldest failure ages out, one more try is allowed.
    let later = now + FAILURE_WINDOW;
    let code = code_at(RFC_SECRET, later).unwrap();
    e.check(&code, later).unwrap();
    assert!(e.failures.is_empty());
}

#[test]
fn an_enrolment_is_in_force_only_once_confirmed() {
    let now = 1_700_000_000;
    let mut e = Enrolment {
        operator: "otto".into(),
        ..Enrolment::default()
    };
    assert_eq!(e.check("123456", now), Err(CodeError::NotEnrolled));
    assert_eq!(
        e.confirm("123456", now, "t"),
        Err(CodeError::NothingPending)
    );
    let secret = e.begin();
    assert_eq!(secret.len(), 32, "160 bits in base32");
    assert!(!e.enrolled());
    let code = code_at(&secret, now).unwrap();
    e.confirm(&code, now, "t").unwrap();
    assert!(e.enrolled());
    assert_eq!(e.secret, secret);
    assert!(e.pending.is_empty());
    // The confirming code cannot open a session afterwards.
    assert_eq!(e.check(&code, now), Err(CodeError::Replayed));
}

#[test]
fn a_new_secret_replaces_the_old_only_when_confirmed() {
    let now = 1_700_000_000;
    let mut e = enrolled();
    let new = e.begin();
    // The old secret stays in force meanwhile.
    e.check(&code_at(RFC_SECRET, now).unwrap(), now).unwrap();
    let wrong = code_at(RFC_SECRET, now + STEP).unwrap();
    assert!(e.confirm(&wrong, now + STEP, "t").is_err());
    assert_eq!(e.secret, RFC_SECRET);
    e.confirm(&code_at(&new, now + STEP).unwrap(), now + STEP, "t")
        .unwrap();
    assert_eq!(e.secret, new);
}

#[test]
fn every_secret_is_fresh() {
    let a = Enrolment::default().begin();
    let b = Enrolment::default().begin();
    assert_ne!(a, b);
}

#[test]
fn the_uri_escapes_names() {
    assert_eq!(
        otpauth_uri("St Mary's", "otto@icu", "ABC"),
        "otpauth://totp/St%20Mary%27s:otto%40icu?secret=ABC&issuer=St%20Mary%27s&algorithm=SHA1&digits=6&period=30"
    );
}

#[test]
fn tokens_are_kept_by_hash() {
    let (token, hash) = new_token();
    assert_eq!(token.len(), 64);
    assert_eq!(hash, token_hash(&token));
    assert_ne!(hash, token);
    assert_ne!(new_token().0, token);
}
