// A subaccount circuit breaker as a user writes it on Twilio's official library: a Usage
// Trigger callback arrives, its X-Twilio-Signature is checked with the subaccount's auth
// token, and the subaccount is suspended with the parent's credentials before the answer,
// as Twilio's help-center script does. No store: a crash forgets everything.
const fs = require('node:fs');
const http = require('node:http');
const twilio = require('twilio');

const env = process.env;
const tokens = JSON.parse(fs.readFileSync(env.TOKENS_FILE, 'utf8')); // subaccount SID -> auth token
const client = twilio(env.TWILIO_ACCOUNT_SID, env.TWILIO_AUTH_TOKEN);
if (env.TWILIO_API_BASE) client.api.baseUrl = env.TWILIO_API_BASE; // the simulator, not api.twilio.com

http.createServer((req, res) => {
  let body = '';
  req.setEncoding('utf8').on('data', (chunk) => (body += chunk));
  req.on('end', async () => {
    const params = Object.fromEntries(new URLSearchParams(body));
    const token = tokens[params.AccountSid];
    const signature = req.headers['x-twilio-signature'];
    if (req.method !== 'POST' || !token || !twilio.validateRequest(token, signature, env.PUBLIC_URL + req.url, params)) {
      return res.writeHead(403).end();
    }
    try {
      await client.api.v2010.accounts(params.AccountSid).update({ status: 'suspended' });
      res.writeHead(200).end();
    } catch (err) {
      console.error(`suspending ${params.AccountSid}: ${err.message}`);
      res.writeHead(500).end(); // Twilio retries a 5xx
    }
  });
}).listen(Number(env.PORT), '127.0.0.1');
