-- strata_set_grant (0012) created the group a grant names before it knew whether anything would change, so a
-- removal that removed nothing (`strata grants remove group:x ...` for a group never granted anything) left a new,
-- empty group behind with no event. Now a group is created only by a grant that gives it actions.
CREATE OR REPLACE FUNCTION strata_set_grant(p_subject_kind text, p_subject text, p_pattern text, p_actions text[], p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  account bigint;
  before text[];
BEGIN
  IF p_subject_kind = 'user' THEN
    SELECT id INTO account FROM accounts WHERE name = p_subject;
    IF NOT FOUND THEN
      RETURN false;
    END IF;
    SELECT actions INTO before FROM grants WHERE account_id = account AND pattern = p_pattern FOR UPDATE;
  ELSIF p_subject_kind = 'group' THEN
    SELECT actions INTO before FROM grants WHERE group_name = p_subject AND pattern = p_pattern FOR UPDATE;
  ELSE
    RAISE EXCEPTION 'unknown grant subject kind %', p_subject_kind USING ERRCODE = '22023';
  END IF;
  IF before IS NOT DISTINCT FROM (CASE WHEN cardinality(p_actions) = 0 THEN NULL ELSE p_actions END) THEN
    RETURN false;
  END IF;
  IF cardinality(p_actions) = 0 THEN
    DELETE FROM grants WHERE pattern = p_pattern
      AND (account_id = account OR (account IS NULL AND group_name = p_subject));
  ELSIF before IS NULL THEN
    IF account IS NULL THEN
      INSERT INTO groups (name) VALUES (p_subject) ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO grants (account_id, group_name, pattern, actions)
    VALUES (account, CASE WHEN account IS NULL THEN p_subject END, p_pattern, p_actions);
  ELSE
    UPDATE grants SET actions = p_actions WHERE pattern = p_pattern
      AND (account_id = account OR (account IS NULL AND group_name = p_subject));
  END IF;
  PERFORM strata_event(p_meta, 'grant.changed', NULL, p_subject_kind || ':' || p_subject,
    jsonb_build_object('subject', p_subject_kind || ':' || p_subject, 'pattern', p_pattern,
                       'actions', to_jsonb(p_actions), 'previous', to_jsonb(coalesce(before, '{}'))));
  RETURN true;
END
$$;
