/**
 * The OCI conformance suite again, as it runs with OCI_USERNAME and OCI_PASSWORD set: against Strata with
 * STRATA_AUTH=token, every request answered 401 first and retried with a token from the challenge's realm (reggie's
 * client), and every event written by that account.
 */
process.env.OCI_USERNAME = 'conformance';
process.env.OCI_PASSWORD = 'conformance-password';
// After the environment: the suite reads it when it loads.
// eslint-disable-next-line @typescript-eslint/no-require-imports
require('./conformance.e2e.spec');
